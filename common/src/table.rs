//! Plain-text tables for the command-line tools (`global get`, `zone` status output): left-aligned
//! columns separated by two spaces, as `kubectl get` prints them.

/// Left-aligned columns separated by two spaces.
pub fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|x| x.chars().count()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec!["NAME".to_string(), "AGE".to_string()],
            vec!["default".to_string(), "5m".to_string()],
            vec!["é".to_string()],
        ];
        assert_eq!(super::render(&rows), "NAME     AGE\ndefault  5m\né\n");
    }
}
