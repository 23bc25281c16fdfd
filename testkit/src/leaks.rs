//! What must never be shown, looked for in what was shown: every log file under a directory
//! (the processes of a test write theirs there) and the answers a test collected, searched for
//! each secret value (tokens, credentials, key lines) and for any PEM private key.

use std::path::{Path, PathBuf};

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every `*.log` file under `dir`: (path, text).
pub fn logs_under(dir: &Path) -> Vec<(String, String)> {
    files_under(dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(&f).ok()?;
            Some((f.display().to_string(), text))
        })
        .collect()
}

/// Each `(what, value)` of `secrets` found in a `(where, text)` of `shown`, and every PEM private
/// key there: "what in where", one line each. Empty values are not looked for.
pub fn find(secrets: &[(String, String)], shown: &[(String, String)]) -> Vec<String> {
    let mut leaks = Vec::new();
    for (place, text) in shown {
        for (what, value) in secrets {
            if !value.is_empty() && text.contains(value.as_str()) {
                leaks.push(format!("{what} in {place}"));
            }
        }
        if text.contains("PRIVATE KEY") {
            leaks.push(format!("a PEM private key in {place}"));
        }
    }
    leaks
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_each_value_and_private_keys() {
        let secrets = vec![
            ("token".to_string(), "s.ABC".to_string()),
            ("empty".to_string(), String::new()),
        ];
        let shown = vec![
            ("a.log".to_string(), "nothing here".to_string()),
            (
                "b.log".to_string(),
                "got s.ABC and -----BEGIN PRIVATE KEY-----".to_string(),
            ),
        ];
        assert_eq!(
            super::find(&secrets, &shown),
            ["token in b.log", "a PEM private key in b.log"]
        );
    }
}
