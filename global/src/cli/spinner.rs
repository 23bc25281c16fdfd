//! What a command waits for, said on a terminal: a spinner on stderr with a message naming it
//! (the Vault test certificates of `validate`, global checking the vault backends of an
//! `apply`) for as long as the wait lasts, cleared after. Nothing at all when stderr is not a
//! terminal (a pipe, a log file, a script), so output captured by scripts stays plain.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use common::model::{BackendType, Resource};

/// Runs `work`, showing `message` with a spinner meanwhile when stderr is a terminal.
pub(super) async fn while_waiting<F: Future>(message: Option<String>, work: F) -> F::Output {
    let bar = message
        .filter(|_| std::io::stderr().is_terminal())
        .map(|message| {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_message(message);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
    let out = work.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    out
}

/// The vault backends of the resources, as `mesh/backend (address)`.
pub(super) fn vault_backends(resources: &[Resource]) -> Vec<String> {
    let mut out = Vec::new();
    for r in resources {
        if let Resource::Mesh(m) = r {
            for b in m.backends() {
                if b.backend_type() == Some(BackendType::Vault) {
                    let address = b
                        .conf
                        .as_ref()
                        .and_then(|c| c.pointer("/fromCp/address"))
                        .and_then(|a| a.as_str())
                        .unwrap_or("?");
                    out.push(format!("{}/{} ({address})", m.name, b.name));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_backends_are_named_with_their_address() {
        let resources = common::parse::parse_documents(
            "type: Mesh\nname: m1\nmtls:\n  backends:\n  - name: v\n    type: vault\n    conf:\n      fromCp:\n        address: https://vault:8200\n  - name: b\n    type: builtin\n",
        )
        .unwrap();
        assert_eq!(vault_backends(&resources), ["m1/v (https://vault:8200)"]);
    }

    #[tokio::test]
    async fn without_a_terminal_the_work_just_runs() {
        // The test's stderr is captured (not a terminal): nothing is drawn, the value comes back.
        assert_eq!(while_waiting(Some("waiting".into()), async { 7 }).await, 7);
    }
}
