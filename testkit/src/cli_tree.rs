//! Checks over a binary's whole command tree as clap defines it, so that a flag or command added
//! later is checked without more test code: every argument and subcommand has help text
//! ([`missing_help`]), and every flag of a `run` command can be set by its variable and by the
//! config file ([`assert_run_flags_settable`], through `common::config` exactly as the binaries
//! parse).

use std::ffi::OsString;

use clap::{Arg, ArgAction, Command};
use common::config::{ParseError, Sources, try_matches, variable};

fn is_clap_own(arg: &Arg) -> bool {
    matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// Every argument (`global run --data-dir`, `global get <what>`) and subcommand without help
/// text, under `cmd`, named by its path.
pub fn missing_help(cmd: &Command) -> Vec<String> {
    let mut out = Vec::new();
    walk(cmd, cmd.get_name(), &mut out);
    out
}

fn walk(cmd: &Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments().filter(|a| !is_clap_own(a)) {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        // Help that is only the variable `config::document` appended says nothing.
        let said = help.split("[env:").next().unwrap_or_default().trim();
        if said.is_empty() {
            let name = match arg.get_long() {
                Some(l) => format!("--{l}"),
                None => format!("<{}>", arg.get_id()),
            };
            out.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() {
            out.push(format!("{sub_path} (the command)"));
        }
        walk(sub, &sub_path, out);
    }
}

/// Every `--mesh` under `cmd` that has no `-m` (kumactl's short form), named by its path.
pub fn mesh_without_m(cmd: &Command) -> Vec<String> {
    fn walk(cmd: &Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            if arg.get_long() == Some("mesh") && arg.get_short() != Some('m') {
                out.push(format!("{path} --mesh"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, cmd.get_name(), &mut out);
    out
}

/// The default of `--long` of the command at `path` (`["run"]`), as clap shows it.
pub fn default_of(cmd: &Command, path: &[&str], long: &str) -> Option<String> {
    let mut c = cmd;
    for name in path {
        c = c.find_subcommand(name)?;
    }
    let arg = c.get_arguments().find(|a| a.get_long() == Some(long))?;
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    Some(values.join(","))
}

/// The args of the subcommand that variables and the file set.
fn settable(sub: &Command) -> Vec<&Arg> {
    sub.get_arguments()
        .filter(|a| !is_clap_own(a) && a.get_long().is_some())
        .filter(|a| a.get_id() != common::config::CONFIG_FLAG)
        .collect()
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// A value the flag takes that is not its default: a possible value (the last one that is not
/// the default), else the first of a few shapes its parser accepts; `true` for a switch.
/// Whether the flag's own parser, alone, takes `value`.
fn accepts(arg: &Arg, value: &str) -> bool {
    let long = arg.get_long().unwrap_or_default();
    Command::new("probe")
        .no_binary_name(true)
        .arg(
            Arg::new("x")
                .long(long.to_string())
                .action(ArgAction::Append)
                .value_parser(arg.get_value_parser().clone()),
        )
        .try_get_matches_from([format!("--{long}={value}")])
        .is_ok()
}

fn sample(sub: &Command, arg: &Arg) -> String {
    if is_switch(arg) {
        return "true".into();
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .map(|p| p.get_name().to_string())
        .collect();
    let candidates: Vec<String> = if possible.is_empty() {
        [
            "7",
            "postgres://kmesh@127.0.0.1:7/kmesh",
            "127.0.0.1:7",
            "k=v",
        ]
        .map(String::from)
        .to_vec()
    } else {
        possible.into_iter().rev().collect()
    };
    let long = arg.get_long().unwrap_or_default();
    candidates
        .into_iter()
        .filter(|c| !defaults.contains(c))
        .find(|c| accepts(arg, c))
        .unwrap_or_else(|| {
            panic!(
                "no sample value for {} {long}: teach testkit::cli_tree::sample one",
                sub.get_name()
            )
        })
}

/// Sets every flag of `sources.subcommand` at once by its variable, then by the config file,
/// and asserts each reached the parsed command line (and that `T` is built from it); then that
/// a flag beats its variable, which beats the file. Returns the flags checked.
pub fn assert_run_flags_settable<T: clap::Parser>(cmd: &Command, sources: &Sources) -> Vec<String> {
    let name = cmd.get_name().to_string();
    let sub = cmd
        .find_subcommand(sources.subcommand)
        .unwrap_or_else(|| panic!("{name} has no {} command", sources.subcommand));
    let args = settable(sub);
    assert!(!args.is_empty());
    let samples: Vec<(&Arg, String)> = args.iter().map(|a| (*a, sample(sub, a))).collect();
    let argv = |extra: &[String]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![name.clone().into(), sources.subcommand.into()];
        v.extend(extra.iter().map(OsString::from));
        v
    };
    let parse = |argv: Vec<OsString>, vars: &[(OsString, OsString)]| match try_matches(
        cmd, sources, argv, vars,
    ) {
        Ok((m, _)) => {
            if let Err(e) = T::from_arg_matches(&m) {
                panic!("{name} {}: {e}", sources.subcommand);
            }
            m.subcommand_matches(sources.subcommand)
                .cloned()
                .unwrap_or_else(|| panic!("not {}", sources.subcommand))
        }
        Err(ParseError::Config(e)) => panic!("{e}"),
        Err(ParseError::Clap(e)) => panic!("{e}"),
    };
    let raw = |m: &clap::ArgMatches, arg: &Arg| -> Vec<String> {
        m.get_raw(arg.get_id().as_str())
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };

    // By variables.
    let vars: Vec<(OsString, OsString)> = samples
        .iter()
        .map(|(a, v)| {
            (
                variable(sources.prefix, a.get_long().unwrap_or_default()).into(),
                v.into(),
            )
        })
        .collect();
    let m = parse(argv(&[]), &vars);
    for (arg, value) in &samples {
        assert_eq!(
            raw(&m, arg),
            std::slice::from_ref(value),
            "{name} {} --{} by {}",
            sources.subcommand,
            arg.get_long().unwrap_or_default(),
            variable(sources.prefix, arg.get_long().unwrap_or_default())
        );
    }

    // By the file.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("run.yaml");
    let mut yaml = String::new();
    for (arg, value) in &samples {
        let long = arg.get_long().unwrap_or_default();
        let quoted = serde_json::to_string(value).unwrap_or_default();
        if is_switch(arg) {
            yaml.push_str(&format!("{long}: true\n"));
        } else if matches!(arg.get_action(), ArgAction::Append) {
            yaml.push_str(&format!("{long}: [{quoted}]\n"));
        } else {
            yaml.push_str(&format!("{long}: {quoted}\n"));
        }
    }
    std::fs::write(&file, &yaml).expect("the config file");
    let config = format!("--config={}", file.display());
    let m = parse(argv(std::slice::from_ref(&config)), &[]);
    for (arg, value) in &samples {
        assert_eq!(
            raw(&m, arg),
            std::slice::from_ref(value),
            "{name} {} --{} by the config file:\n{yaml}",
            sources.subcommand,
            arg.get_long().unwrap_or_default()
        );
    }

    // A flag beats its variable, which beats the file: for every flag that takes a value.
    for (arg, value) in samples.iter().filter(|(a, _)| !is_switch(a)) {
        let long = arg.get_long().unwrap_or_default();
        let var = variable(sources.prefix, long);
        let other = |tag: &str| -> Option<String> {
            // Another value the parser takes, when the flag has one: the sample with a suffix.
            let v = format!("{value}{tag}");
            accepts(arg, &v).then_some(v)
        };
        let (Some(by_var), Some(by_flag)) = (other("1"), other("2")) else {
            continue;
        };
        // The file holds the sample of every flag; this flag's variable says `by_var`.
        let only_this = vec![(OsString::from(&var), OsString::from(&by_var))];
        let m = parse(argv(std::slice::from_ref(&config)), &only_this);
        assert_eq!(
            raw(&m, arg),
            std::slice::from_ref(&by_var),
            "--{long}: variable over file"
        );
        let m = parse(
            argv(&[config.clone(), format!("--{long}={by_flag}")]),
            &only_this,
        );
        assert_eq!(
            raw(&m, arg),
            std::slice::from_ref(&by_flag),
            "--{long}: flag over variable"
        );
    }
    samples
        .iter()
        .map(|(a, _)| a.get_long().unwrap_or_default().to_string())
        .collect()
}
