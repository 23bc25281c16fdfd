//! The resource files a command is given (`-f FILE`, `-f -` for stdin, `-f DIR` for every
//! `.yaml`, `.yml` and `.json` file directly in DIR, in name order), read and parsed.

use std::path::{Path, PathBuf};

use common::model::Resource;

use super::failure::Failure;

/// The extensions a directory's resource files have.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads the files (`-` is stdin, a directory its resource files) and returns their text with a
/// label for messages.
pub(super) fn read_inputs(files: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            out.push(("stdin".to_string(), s));
        } else if Path::new(f).is_dir() {
            for path in directory_files(Path::new(f))? {
                let label = path.display().to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Failure::usage(format!("cannot read {label}: {e}")))?;
                out.push((label, text));
            }
        } else {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(format!("cannot read {f}: {e}")))?;
            out.push((f.clone(), text));
        }
    }
    Ok(out)
}

/// The `.yaml`, `.yml` and `.json` files directly in `dir`, sorted by name; none is an error.
fn directory_files(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::usage(format!("cannot read directory {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Failure::usage(format!("cannot read directory {}: {e}", dir.display())))?
            .path();
        let resource = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if resource && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Failure::usage(format!(
            "{}: no .yaml, .yml or .json file in this directory",
            dir.display()
        )));
    }
    files.sort();
    Ok(files)
}

pub(super) fn parse_inputs(inputs: &[(String, String)]) -> Result<Vec<Resource>, Failure> {
    let mut all = Vec::new();
    for (label, text) in inputs {
        let resources = common::parse::parse_documents(text).map_err(|e| {
            Failure::refused(format!("{label}: document {}: {}", e.document, e.errors))
        })?;
        all.extend(resources);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_gives_its_resource_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("b.yml", "b"),
            ("a.yaml", "a"),
            ("c.JSON", "c"),
            ("notes.txt", "no"),
            ("README", "no"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let inputs = read_inputs(&[dir.path().display().to_string()]).unwrap();
        let texts: Vec<&str> = inputs.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert!(inputs[0].0.ends_with("a.yaml"), "{:?}", inputs[0].0);

        let empty = tempfile::tempdir().unwrap();
        let e = read_inputs(&[empty.path().display().to_string()]).unwrap_err();
        assert_eq!(e.code, super::super::exit::USAGE);
        assert!(
            e.message.contains("no .yaml, .yml or .json file"),
            "{}",
            e.message
        );
    }
}
