//! Where the flags of a `run` command come from besides its command line, for every flag clap
//! defines (so a flag added later is covered without more code): a variable
//! `<PREFIX>_<FLAG>` (`KMESH_GLOBAL_API_ADDR` for `global run --api-addr`: upper case, dashes as
//! underscores) and a YAML file, `--config FILE` (or the variable `<PREFIX>_CONFIG`), of flat keys
//! named after the long flags (`api-addr: 127.0.0.1:5681`; a repeatable flag takes a list, a
//! switch `true` or `false`). A flag beats the variable, which beats the file, which beats the
//! default. Values are checked with the flag's own parser before anything runs, and a key the
//! command does not know, a value of the wrong type or one the flag refuses is an error naming the
//! file and the key (or the variable): exit 2.
//!
//! How: before clap parses, [`resolve`] reads the variables and the file and adds what they set,
//! as `--flag=value`, right after the subcommand for every flag the command line does not give;
//! clap then checks everything (required flags, flags that need each other) as if typed.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

/// Which subcommand's flags the variables and the file set, and the variables' prefix.
#[derive(Debug, Clone, Copy)]
pub struct Sources {
    /// `KMESH_GLOBAL`, `KMESH_ZONE`.
    pub prefix: &'static str,
    /// `run`.
    pub subcommand: &'static str,
}

/// The flag naming the config file (its own variable: `<PREFIX>_CONFIG`).
pub const CONFIG_FLAG: &str = "config";

/// A variable or config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {reason}", file.display())]
    File { file: PathBuf, reason: String },
    #[error("variable {variable}: {reason}")]
    Variable { variable: String, reason: String },
}

/// What stops a command line from being parsed.
#[derive(Debug)]
pub enum ParseError {
    Config(ConfigError),
    Clap(clap::Error),
}

/// The variable of a flag: `KMESH_GLOBAL` and `api-addr` give `KMESH_GLOBAL_API_ADDR`.
pub fn variable(prefix: &str, long: &str) -> String {
    format!("{prefix}_{}", long.to_uppercase().replace('-', "_"))
}

/// The arguments of `sub` that variables and the file may set: every one with a long name but
/// clap's own help and version.
fn settable(sub: &Command) -> impl Iterator<Item = &Arg> {
    sub.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// `cmd` with each flag of the subcommand saying its variable in its help (`[env: ...]`).
pub fn document(cmd: Command, sources: &Sources) -> Command {
    let prefix = sources.prefix;
    cmd.mut_subcommand(sources.subcommand, |sub| {
        sub.mut_args(|arg| {
            let Some(long) = arg.get_long() else {
                return arg;
            };
            if matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            ) {
                return arg;
            }
            let var = variable(prefix, long);
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let help = if help.is_empty() {
                format!("[env: {var}]")
            } else {
                format!("{help} [env: {var}]")
            };
            arg.help(help)
        })
    })
}

/// The documented command, the variables and the file applied to `argv`, parsed by clap.
pub fn try_matches(
    cmd: &Command,
    sources: &Sources,
    argv: Vec<OsString>,
    vars: &[(OsString, OsString)],
) -> Result<(ArgMatches, Vec<String>), ParseError> {
    let resolved = resolve(cmd, sources, argv, vars).map_err(ParseError::Config)?;
    let matches = cmd
        .clone()
        .try_get_matches_from(resolved.argv)
        .map_err(ParseError::Clap)?;
    Ok((matches, resolved.warnings))
}

/// Parses the process's command line into `T` with the variables and the file of `sources`;
/// exits like clap on an error (2 for usage errors, the config file's and variables' included;
/// 0 after `--help` and `--version`), printing warnings on stderr.
pub fn parse<T: clap::Parser>(sources: &Sources) -> T {
    parse_any(std::slice::from_ref(sources))
}

/// [`parse`] for a binary with several subcommands that take variables and a file (`zone run`
/// and `zone proxy`): each documented, the one the command line runs resolved.
pub fn parse_any<T: clap::Parser>(all: &[Sources]) -> T {
    let cmd = all.iter().fold(T::command(), document);
    let vars: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let sub = argv.get(1).map(OsString::as_os_str);
    let Some(sources) = all
        .iter()
        .find(|s| sub == Some(OsStr::new(s.subcommand)))
        .or(all.first())
    else {
        return T::from_arg_matches(&cmd.get_matches_from(argv)).unwrap_or_else(|e| e.exit());
    };
    match try_matches(&cmd, sources, argv, &vars) {
        Ok((matches, warnings)) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
        }
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Config(e)) => {
            eprintln!("error: {e}");
            std::process::exit(i32::from(crate::cli::exit::USAGE));
        }
    }
}

/// `argv` with what the variables and the config file set, and warnings (variables with the
/// prefix that name no flag).
#[derive(Debug)]
pub struct Resolved {
    pub argv: Vec<OsString>,
    pub warnings: Vec<String>,
}

/// Adds to `argv` (when it runs `sources.subcommand`) the flags that variables (from `vars`) and
/// the config file set and the command line does not give.
pub fn resolve(
    cmd: &Command,
    sources: &Sources,
    argv: Vec<OsString>,
    vars: &[(OsString, OsString)],
) -> Result<Resolved, ConfigError> {
    let mut resolved = Resolved {
        argv,
        warnings: Vec::new(),
    };
    if resolved.argv.get(1).map(OsString::as_os_str) != Some(OsStr::new(sources.subcommand)) {
        return Ok(resolved);
    }
    let Some(sub) = cmd.find_subcommand(sources.subcommand) else {
        return Ok(resolved);
    };
    let given = given_on_command_line(sub, &resolved.argv[2..]);
    let var = |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };

    // Variables with the prefix that name no flag are most likely typos: said, not fatal.
    let known: Vec<String> = settable(sub)
        .filter_map(|a| a.get_long().map(|l| variable(sources.prefix, l)))
        .collect();
    let prefix = format!("{}_", sources.prefix);
    for (k, _) in vars {
        if let Some(k) = k.to_str()
            && k.starts_with(&prefix)
            && !known.iter().any(|n| n == k)
        {
            resolved.warnings.push(format!(
                "{k} names no flag of `{} {}` (ignored)",
                cmd.get_name(),
                sources.subcommand
            ));
        }
    }

    // The config file: --config on the command line, else its variable.
    let config_var = variable(sources.prefix, CONFIG_FLAG);
    let config_path = given
        .get(CONFIG_FLAG)
        .and_then(|v| v.first().cloned())
        .or_else(|| var(&config_var))
        .map(PathBuf::from);
    let from_file = match &config_path {
        Some(path) => read_file(cmd, sources, sub, path)?,
        None => BTreeMap::new(),
    };

    let mut added: Vec<OsString> = Vec::new();
    for arg in settable(sub) {
        let id = arg.get_id().as_str();
        if id == CONFIG_FLAG || given.contains_key(id) {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        let name = variable(sources.prefix, long);
        let values = match var(&name) {
            Some(value) => from_variable(sub, arg, &name, &value)?,
            None => match from_file.get(id) {
                Some(values) => values.clone(),
                None => continue,
            },
        };
        match values {
            Values::Switch(true) => added.push(format!("--{long}").into()),
            Values::Switch(false) => {}
            Values::List(list) => {
                for v in list {
                    let mut flag = OsString::from(format!("--{long}="));
                    flag.push(v);
                    added.push(flag);
                }
            }
        }
    }
    resolved.argv.splice(2..2, added);
    Ok(resolved)
}

/// What a variable or the file sets one flag to.
#[derive(Debug, Clone)]
enum Values {
    /// A flag without a value: given or not.
    Switch(bool),
    /// One value (several for a repeatable flag).
    List(Vec<OsString>),
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn is_repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// The flags the command line gives (by id), with the values that follow them.
fn given_on_command_line(sub: &Command, args: &[OsString]) -> BTreeMap<String, Vec<OsString>> {
    let mut given: BTreeMap<String, Vec<OsString>> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let Some(token) = args[i].to_str() else {
            i += 1;
            continue;
        };
        if token == "--" {
            break;
        }
        let found = if let Some(long) = token.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            sub.get_arguments()
                .find(|a| {
                    a.get_long_and_visible_aliases()
                        .is_some_and(|names| names.contains(&name))
                })
                .map(|a| (a, inline.map(OsString::from)))
        } else if let Some(short) = token.strip_prefix('-').filter(|s| s.chars().count() == 1) {
            let c = short.chars().next().unwrap_or('-');
            sub.get_arguments()
                .find(|a| a.get_short() == Some(c))
                .map(|a| (a, None))
        } else {
            None
        };
        if let Some((arg, inline)) = found {
            let value = if inline.is_some() || is_switch(arg) {
                inline
            } else {
                i += 1;
                args.get(i).cloned()
            };
            let entry = given.entry(arg.get_id().to_string()).or_default();
            entry.extend(value);
        }
        i += 1;
    }
    given
}

/// Checks `value` with the flag's own parser (in a command of that flag alone, so that what it
/// needs of other flags is left to the real parse); the reason of a refusal.
fn check_value(sub: &Command, arg: &Arg, value: &OsStr) -> Result<(), String> {
    let long = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
    let mut alone = Arg::new(arg.get_id().clone())
        .long(long.to_string())
        .action(ArgAction::Append)
        .value_parser(arg.get_value_parser().clone())
        .ignore_case(arg.is_ignore_case_set());
    if let Some(d) = arg.get_value_delimiter() {
        alone = alone.value_delimiter(d);
    }
    let mut flag = OsString::from(format!("--{long}="));
    flag.push(value);
    Command::new(sub.get_name().to_string())
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone)
        .try_get_matches_from([flag])
        .map(|_| ())
        .map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        })
}

fn from_variable(
    sub: &Command,
    arg: &Arg,
    name: &str,
    value: &OsStr,
) -> Result<Values, ConfigError> {
    let error = |reason: String| ConfigError::Variable {
        variable: name.to_string(),
        reason,
    };
    if is_switch(arg) {
        let text = value.to_string_lossy().to_ascii_lowercase();
        return match text.as_str() {
            "true" | "1" | "yes" | "on" => Ok(Values::Switch(true)),
            "false" | "0" | "no" | "off" => Ok(Values::Switch(false)),
            _ => Err(error(format!(
                "{:?} is not true or false (it sets the switch --{})",
                value.to_string_lossy(),
                arg.get_long().unwrap_or_default()
            ))),
        };
    }
    check_value(sub, arg, value).map_err(error)?;
    Ok(Values::List(vec![value.to_os_string()]))
}

/// The config file's values by flag id, each checked.
fn read_file(
    cmd: &Command,
    sources: &Sources,
    sub: &Command,
    path: &PathBuf,
) -> Result<BTreeMap<String, Values>, ConfigError> {
    let error = |reason: String| ConfigError::File {
        file: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read it: {e}")))?;
    let doc: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| error(format!("not YAML: {e}")))?;
    let map = match doc {
        serde_norway::Value::Null => return Ok(BTreeMap::new()),
        serde_norway::Value::Mapping(m) => m,
        _ => {
            return Err(error(
                "expected a mapping of flags to values (`api-addr: 127.0.0.1:5681`)".into(),
            ));
        }
    };
    let keys: Vec<&str> = settable(sub)
        .filter_map(Arg::get_long)
        .filter(|l| *l != CONFIG_FLAG)
        .collect();
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let serde_norway::Value::String(key) = key else {
            return Err(error(format!("key {key:?} is not a flag name")));
        };
        let Some(arg) = settable(sub).find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(error(format!(
                "unknown key {key:?}: the keys are the long flags of `{} {}`: {}",
                cmd.get_name(),
                sources.subcommand,
                keys.join(", ")
            )));
        };
        if key == CONFIG_FLAG {
            return Err(error(
                "key \"config\": a config file cannot name another one".into(),
            ));
        }
        let at_key = |reason: String| error(format!("key {key:?}: {reason}"));
        let values = if is_switch(arg) {
            match value {
                serde_norway::Value::Bool(b) => Values::Switch(b),
                other => {
                    return Err(at_key(format!(
                        "expected true or false, found {}",
                        kind(&other)
                    )));
                }
            }
        } else {
            let items = match value {
                serde_norway::Value::Sequence(items) if is_repeatable(arg) => items,
                serde_norway::Value::Sequence(_) => {
                    return Err(at_key(
                        "expected one value, found a list (the flag is not repeatable)".into(),
                    ));
                }
                other => vec![other],
            };
            let mut list = Vec::new();
            for item in items {
                let text = match item {
                    serde_norway::Value::String(s) => s,
                    serde_norway::Value::Number(n) => n.to_string(),
                    serde_norway::Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(at_key(format!("expected a value, found {}", kind(&other))));
                    }
                };
                check_value(sub, arg, OsStr::new(&text)).map_err(at_key)?;
                list.push(OsString::from(text));
            }
            Values::List(list)
        };
        out.insert(arg.get_id().to_string(), values);
    }
    Ok(out)
}

fn kind(v: &serde_norway::Value) -> &'static str {
    match v {
        serde_norway::Value::Null => "nothing",
        serde_norway::Value::Bool(_) => "a boolean",
        serde_norway::Value::Number(_) => "a number",
        serde_norway::Value::String(_) => "a string",
        serde_norway::Value::Sequence(_) => "a list",
        serde_norway::Value::Mapping(_) => "a mapping",
        serde_norway::Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser, Debug)]
    #[command(name = "cp")]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        /// Runs.
        Run(RunArgs),
        /// Does something else.
        Other {
            /// A flag of another command.
            #[arg(long, default_value = "x")]
            addr: String,
        },
    }

    #[derive(clap::Args, Debug)]
    struct RunArgs {
        /// Config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address.
        #[arg(long, default_value = "127.0.0.1:1")]
        addr: String,
        /// Count.
        #[arg(long, default_value_t = 5)]
        count: u32,
        /// Switch.
        #[arg(long)]
        insecure: bool,
        /// Repeatable.
        #[arg(long = "dir")]
        dirs: Vec<String>,
        /// Cert.
        #[arg(long, requires = "key")]
        cert: Option<String>,
        /// Key.
        #[arg(long, requires = "cert")]
        key: Option<String>,
    }

    const SOURCES: Sources = Sources {
        prefix: "CP",
        subcommand: "run",
    };

    fn parse(args: &[&str], vars: &[(&str, &str)]) -> Result<RunArgs, String> {
        let cmd = document(Cli::command(), &SOURCES);
        let argv = args.iter().map(OsString::from).collect();
        let vars: Vec<(OsString, OsString)> =
            vars.iter().map(|(k, v)| (k.into(), v.into())).collect();
        match try_matches(&cmd, &SOURCES, argv, &vars) {
            Ok((m, _)) => match <Cli as clap::FromArgMatches>::from_arg_matches(&m) {
                Ok(Cli {
                    command: Cmd::Run(r),
                }) => Ok(r),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            },
            Err(ParseError::Config(e)) => Err(e.to_string()),
            Err(ParseError::Clap(e)) => Err(e.to_string()),
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn a_flag_beats_the_variable_which_beats_the_file() {
        let (_d, f) = file("data-dir: /file\naddr: 127.0.0.1:3\ncount: 3\ndir: [a, b]\n");
        let r = parse(&["cp", "run", "--config", &f], &[]).unwrap();
        assert_eq!((r.addr.as_str(), r.count), ("127.0.0.1:3", 3));
        assert_eq!(r.data_dir, PathBuf::from("/file"));
        assert_eq!(r.dirs, ["a", "b"]);
        let r = parse(
            &["cp", "run", "--config", &f],
            &[("CP_ADDR", "127.0.0.1:2"), ("CP_DIR", "c")],
        )
        .unwrap();
        assert_eq!((r.addr.as_str(), r.count), ("127.0.0.1:2", 3));
        assert_eq!(r.dirs, ["c"]);
        let r = parse(
            &[
                "cp",
                "run",
                "--addr",
                "127.0.0.1:1",
                "--dir=d",
                "--dir",
                "e",
            ],
            &[
                ("CP_ADDR", "127.0.0.1:2"),
                ("CP_CONFIG", &f),
                ("CP_DIR", "c"),
            ],
        )
        .unwrap();
        assert_eq!((r.addr.as_str(), r.count), ("127.0.0.1:1", 3));
        assert_eq!(r.dirs, ["d", "e"]);
        // Nothing set: the defaults, and a required flag stays required.
        let r = parse(&["cp", "run", "--data-dir", "/d"], &[]).unwrap();
        assert_eq!(
            (r.addr.as_str(), r.count, r.insecure),
            ("127.0.0.1:1", 5, false)
        );
        assert!(
            parse(&["cp", "run"], &[])
                .unwrap_err()
                .contains("--data-dir")
        );
    }

    #[test]
    fn switches_take_booleans() {
        let (_d, f) = file("data-dir: /d\ninsecure: true\n");
        assert!(parse(&["cp", "run", "--config", &f], &[]).unwrap().insecure);
        let r = parse(&["cp", "run", "--config", &f], &[("CP_INSECURE", "false")]).unwrap();
        assert!(!r.insecure);
        let e = parse(
            &["cp", "run", "--data-dir", "/d"],
            &[("CP_INSECURE", "maybe")],
        )
        .unwrap_err();
        assert!(
            e.contains("CP_INSECURE") && e.contains("true or false"),
            "{e}"
        );
        let (_d, f) = file("data-dir: /d\ninsecure: \"yes\"\n");
        let e = parse(&["cp", "run", "--config", &f], &[]).unwrap_err();
        assert!(
            e.contains("\"insecure\"") && e.contains("expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_and_values_name_the_file_and_the_key() {
        let (_d, f) = file("data-dir: /d\nadress: 1\n");
        let e = parse(&["cp", "run", "--config", &f], &[]).unwrap_err();
        assert!(
            e.contains(&f) && e.contains("unknown key \"adress\""),
            "{e}"
        );
        assert!(e.contains("addr, count"), "{e}");
        for (text, says) in [
            ("count: abc\n", "\"count\": invalid value 'abc'"),
            (
                "count: [1, 2]\n",
                "\"count\": expected one value, found a list",
            ),
            (
                "addr: {a: 1}\n",
                "\"addr\": expected a value, found a mapping",
            ),
            ("dir: [[a]]\n", "\"dir\": expected a value, found a list"),
            ("- a\n", "expected a mapping"),
            ("config: other.yaml\n", "cannot name another"),
            ("a: [\n", "not YAML"),
        ] {
            let (_d, f) = file(text);
            let e = parse(&["cp", "run", "--data-dir", "/d", "--config", &f], &[]).unwrap_err();
            assert!(e.contains(&f) && e.contains(says), "{text}: {e}");
        }
        let e = parse(&["cp", "run", "--data-dir", "/d"], &[("CP_COUNT", "x")]).unwrap_err();
        assert!(e.contains("variable CP_COUNT: invalid value 'x'"), "{e}");
        let e = parse(&["cp", "run", "--config", "/nonexistent/run.yaml"], &[]).unwrap_err();
        assert!(e.contains("/nonexistent/run.yaml: cannot read it"), "{e}");
    }

    #[test]
    fn flags_that_need_each_other_are_checked_whatever_sets_them() {
        let (_d, f) = file("data-dir: /d\ncert: c.pem\n");
        let e = parse(&["cp", "run", "--config", &f], &[]).unwrap_err();
        assert!(e.contains("--key"), "{e}");
        let r = parse(&["cp", "run", "--config", &f], &[("CP_KEY", "k.pem")]).unwrap();
        assert_eq!(
            (r.cert.unwrap(), r.key.unwrap()),
            ("c.pem".into(), "k.pem".into())
        );
    }

    #[test]
    fn other_commands_are_left_alone() {
        let cmd = document(Cli::command(), &SOURCES);
        let vars = vec![(OsString::from("CP_ADDR"), OsString::from("127.0.0.1:9"))];
        let (m, _) = try_matches(&cmd, &SOURCES, vec!["cp".into(), "other".into()], &vars)
            .map_err(|_| ())
            .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(sub.get_one::<String>("addr").unwrap(), "x");
    }

    #[test]
    fn unknown_variables_are_warned_of_and_help_names_the_variables() {
        let cmd = document(Cli::command(), &SOURCES);
        let vars = vec![(OsString::from("CP_ADRESS"), OsString::from("1"))];
        let r = resolve(
            &cmd,
            &SOURCES,
            vec!["cp".into(), "run".into(), "--data-dir=/d".into()],
            &vars,
        )
        .unwrap();
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("CP_ADRESS"), "{:?}", r.warnings);
        let mut cmd = cmd;
        let help = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_help()
            .to_string();
        assert!(help.contains("[env: CP_DATA_DIR]"), "{help}");
        assert!(help.contains("[env: CP_CONFIG]"), "{help}");
    }
}
