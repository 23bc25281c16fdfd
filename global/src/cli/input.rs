//! The resource files a command is given (`-f FILE`, `-f -` for stdin), read and parsed.

use common::model::Resource;

use super::failure::Failure;

/// Reads the files (`-` is stdin) and returns their text with a label for messages.
pub(super) fn read_inputs(files: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut out = Vec::new();
    for f in files {
        let text = if f == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(f)
                .map_err(|e| Failure::usage(format!("cannot read {f}: {e}")))?
        };
        out.push((
            if f == "-" {
                "stdin".to_string()
            } else {
                f.clone()
            },
            text,
        ));
    }
    Ok(out)
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
