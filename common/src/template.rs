//! The `commonName` template of the vault backend: the subset of Go's `text/template` that Kong Mesh
//! accepts. This module owns its parsing (done once, at validation, so every mistake is reported
//! before a Mesh is stored) and its rendering with a proxy's tags. A template is literal text plus
//! actions `{{ ... }}` holding a pipeline built only from the functions `tag NAME` (the value of a
//! tag of the proxy) and `replace OLD NEW INPUT` (replace all), string literals (`"..."` with Go
//! escapes, or raw backquoted), parentheses, and `|` (the piped value becomes the last argument, as
//! in Go). Go's trim markers `{{- ` and ` -}}` are honoured. Everything else Go has (variables, fields,
//! `if`/`range`, other functions, numbers, comments) is refused at parse time with a message that
//! names it. Sizes are bounded: the text, the parenthesis nesting and the rendered output.

use std::collections::{BTreeMap, BTreeSet};

/// Longest template text accepted, in bytes.
pub const MAX_TEMPLATE_LEN: usize = 1024;
/// Deepest parenthesis nesting accepted.
pub const MAX_NESTING: usize = 16;
/// Longest rendered output (and intermediate value), in bytes.
pub const MAX_OUTPUT_LEN: usize = 64 * 1024;

/// Why a template could not be parsed or rendered. Offsets are byte offsets in the template text.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template is {len} bytes long: at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("parentheses nested too deeply at byte {offset}: at most {max} levels are allowed")]
    TooDeep { offset: usize, max: usize },
    #[error("unclosed action: \"{{{{\" at byte {offset} has no matching \"}}}}\"")]
    UnclosedAction { offset: usize },
    #[error(
        "empty action at byte {offset}: expected a pipeline such as {{{{ tag \"kuma.io/service\" }}}}"
    )]
    EmptyAction { offset: usize },
    #[error("unknown function {name:?} at byte {offset}: only tag and replace are allowed")]
    UnknownFunction { name: String, offset: usize },
    #[error("{what} at byte {offset} are not supported: only tag and replace are allowed")]
    Unsupported { what: String, offset: usize },
    #[error("wrong number of arguments for {func} at byte {offset}: want {want}, got {got}")]
    WrongArgCount {
        func: &'static str,
        want: usize,
        got: usize,
        offset: usize,
    },
    #[error("unterminated string literal starting at byte {offset}")]
    UnterminatedString { offset: usize },
    #[error("invalid escape sequence {sequence:?} in string literal at byte {offset}")]
    BadEscape { sequence: String, offset: usize },
    #[error("string literal at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error(
        "unexpected {found} at byte {offset} (in a pipeline such as {{{{ tag \"a\" | replace \"_\" \"-\" }}}})"
    )]
    Unexpected { found: String, offset: usize },
    #[error("unclosed parenthesis at byte {offset}")]
    UnclosedParen { offset: usize },
    #[error(
        "missing command in pipeline at byte {offset}: \"|\" must be followed and preceded by a command"
    )]
    MissingCommand { offset: usize },
    #[error(
        "function {name:?} used as an argument at byte {offset} must be called in parentheses, e.g. ({name} \"...\")"
    )]
    BareFunctionArgument { name: String, offset: usize },
    #[error(
        "cannot give arguments to a non-function at byte {offset}: only tag and replace take arguments"
    )]
    ArgumentsToValue { offset: usize },
    #[error(
        "a literal value cannot receive a piped value at byte {offset}: only tag and replace can follow \"|\""
    )]
    NonExecutableCommand { offset: usize },
    #[error("tag {0:?} is not set on the proxy")]
    MissingTag(String),
    #[error("rendered value would be longer than {max} bytes")]
    OutputTooLong { max: usize },
}

/// A parsed template, ready to render with a proxy's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Action(Pipeline),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pipeline {
    commands: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// A function call; the piped value, if any, is appended to `args`.
    Call { func: Func, args: Vec<Operand> },
    /// A lone value (only valid as the first command of a pipeline).
    Value(Operand),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    Str(String),
    Pipe(Box<Pipeline>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Tag,
    Replace,
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Func::Tag => "tag",
            Func::Replace => "replace",
        }
    }

    fn arity(self) -> usize {
        match self {
            Func::Tag => 1,
            Func::Replace => 3,
        }
    }
}

/// Parses a template.
pub fn parse(text: &str) -> Result<Template, TemplateError> {
    if text.len() > MAX_TEMPLATE_LEN {
        return Err(TemplateError::TooLong {
            len: text.len(),
            max: MAX_TEMPLATE_LEN,
        });
    }
    let mut nodes = Vec::new();
    let mut pos = 0;
    // Set when the previous action ended with ` -}}`: leading whitespace of the next text is dropped.
    let mut trim_next = false;
    while pos < text.len() {
        let rest = text.get(pos..).unwrap_or("");
        let Some(rel) = rest.find("{{") else {
            push_text(&mut nodes, rest, trim_next, false);
            break;
        };
        let open = pos + rel;
        let mut lexer = Lexer::new(text, open + 2);
        let trim_before = lexer.left_trim_marker();
        push_text(
            &mut nodes,
            rest.get(..rel).unwrap_or(""),
            trim_next,
            trim_before,
        );
        let tokens = lexer.action_tokens(open)?;
        let pipeline = Parser::new(&tokens, open).action()?;
        nodes.push(Node::Action(pipeline));
        trim_next = lexer.right_trimmed;
        pos = lexer.pos;
    }
    Ok(Template { nodes })
}

fn push_text(nodes: &mut Vec<Node>, text: &str, trim_start: bool, trim_end: bool) {
    let ws: &[char] = &[' ', '\t', '\r', '\n'];
    let mut t = text;
    if trim_start {
        t = t.trim_start_matches(ws);
    }
    if trim_end {
        t = t.trim_end_matches(ws);
    }
    if !t.is_empty() {
        nodes.push(Node::Text(t.to_string()));
    }
}

/// Parses and renders in one step.
pub fn render(text: &str, tags: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    parse(text)?.render(tags)
}

impl Template {
    /// Renders the template with a proxy's tags. A tag the template asks for that is not in `tags`
    /// is an error naming it.
    pub fn render(&self, tags: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&eval_pipeline(p, tags)?),
            }
            if out.len() > MAX_OUTPUT_LEN {
                return Err(TemplateError::OutputTooLong {
                    max: MAX_OUTPUT_LEN,
                });
            }
        }
        Ok(out)
    }

    /// The names of the tags the template reads, sorted and without duplicates. Only names given
    /// as literals are known before rendering (`tag "kuma.io/service"`, or `"x" | tag`); a name
    /// computed at render time (`tag (replace ...)`) is not listed.
    pub fn tags_used(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        for node in &self.nodes {
            if let Node::Action(p) = node {
                collect_tags(p, &mut set);
            }
        }
        set.into_iter().collect()
    }
}

fn collect_tags(p: &Pipeline, set: &mut BTreeSet<String>) {
    // Bounded by MAX_NESTING: the parser refuses deeper templates.
    let mut prev_literal: Option<&str> = None;
    for cmd in &p.commands {
        let mut this_literal = None;
        match cmd {
            Command::Call { func, args } => {
                for a in args {
                    if let Operand::Pipe(inner) = a {
                        collect_tags(inner, set);
                    }
                }
                if *func == Func::Tag {
                    match (args.first(), prev_literal) {
                        (Some(Operand::Str(name)), _) => {
                            set.insert(name.clone());
                        }
                        (None, Some(name)) => {
                            set.insert(name.to_string());
                        }
                        _ => {}
                    }
                }
            }
            Command::Value(Operand::Str(s)) => this_literal = Some(s.as_str()),
            Command::Value(Operand::Pipe(inner)) => collect_tags(inner, set),
        }
        prev_literal = this_literal;
    }
}

fn eval_pipeline(p: &Pipeline, tags: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    // Recursion bounded by MAX_NESTING (checked by the parser).
    let mut piped: Option<String> = None;
    for cmd in &p.commands {
        let value = match cmd {
            Command::Value(v) => eval_operand(v, tags)?,
            Command::Call { func, args } => {
                let mut vals = Vec::with_capacity(args.len() + 1);
                for a in args {
                    vals.push(eval_operand(a, tags)?);
                }
                if let Some(v) = piped.take() {
                    vals.push(v);
                }
                call(*func, vals, tags)?
            }
        };
        piped = Some(value);
    }
    Ok(piped.unwrap_or_default())
}

fn eval_operand(o: &Operand, tags: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    match o {
        Operand::Str(s) => Ok(s.clone()),
        Operand::Pipe(p) => eval_pipeline(p, tags),
    }
}

fn call(
    func: Func,
    args: Vec<String>,
    tags: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    match (func, args.as_slice()) {
        (Func::Tag, [name]) => tags
            .get(name)
            .cloned()
            .ok_or_else(|| TemplateError::MissingTag(name.clone())),
        (Func::Replace, [old, new, input]) => replace_all(input, old, new),
        // The parser checks arity, so this is unreachable; report it rather than panic.
        (f, a) => Err(TemplateError::WrongArgCount {
            func: f.name(),
            want: f.arity(),
            got: a.len(),
            offset: 0,
        }),
    }
}

/// Go's `strings.ReplaceAll`, refusing results over [`MAX_OUTPUT_LEN`] before building them. With an
/// empty `old`, Go (like Rust) inserts `new` at the start and after each character.
fn replace_all(input: &str, old: &str, new: &str) -> Result<String, TemplateError> {
    let count = if old.is_empty() {
        input.chars().count().saturating_add(1)
    } else {
        input.matches(old).count()
    };
    let len = input
        .len()
        .saturating_sub(count.saturating_mul(old.len()))
        .saturating_add(count.saturating_mul(new.len()));
    if len > MAX_OUTPUT_LEN {
        return Err(TemplateError::OutputTooLong {
            max: MAX_OUTPUT_LEN,
        });
    }
    Ok(input.replace(old, new))
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Pipe,
}

/// A token with its byte offset in the template text.
type Spanned = (Tok, usize);

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    right_trimmed: bool,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, pos: usize) -> Self {
        Self {
            src,
            pos,
            right_trimmed: false,
        }
    }

    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Consumes a `- ` left trim marker right after `{{`.
    fn left_trim_marker(&mut self) -> bool {
        let mut it = self.rest().chars();
        if it.next() == Some('-') && it.next().is_some_and(is_space) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Lexes an action up to and including its closing `}}`.
    fn action_tokens(&mut self, open: usize) -> Result<Vec<Spanned>, TemplateError> {
        let mut toks = Vec::new();
        loop {
            let mut had_space = false;
            while self.peek().is_some_and(is_space) {
                self.bump();
                had_space = true;
            }
            let start = self.pos;
            let rest = self.rest();
            if rest.is_empty() {
                return Err(TemplateError::UnclosedAction { offset: open });
            }
            if rest.starts_with("}}") {
                self.pos += 2;
                return Ok(toks);
            }
            if had_space && rest.starts_with("-}}") {
                self.pos += 3;
                self.right_trimmed = true;
                return Ok(toks);
            }
            let unsupported = |what: &str| TemplateError::Unsupported {
                what: what.to_string(),
                offset: start,
            };
            let Some(c) = self.bump() else {
                return Err(TemplateError::UnclosedAction { offset: open });
            };
            let tok = match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '|' => {
                    if self.peek() == Some('|') {
                        return Err(unsupported("\"||\" operators"));
                    }
                    Tok::Pipe
                }
                '"' => Tok::Str(self.quoted(start)?),
                '`' => Tok::Str(self.raw(start)?),
                '$' => return Err(unsupported("variables ($name)")),
                '.' => return Err(unsupported("fields and the dot (.Field, .)")),
                '\'' => return Err(unsupported("character constants ('x')")),
                '0'..='9' | '-' | '+' => {
                    return Err(unsupported("numbers (arguments must be quoted strings)"));
                }
                ':' | '=' => return Err(unsupported("assignments (:=, =)")),
                '/' if self.peek() == Some('*') => return Err(unsupported("comments (/* */)")),
                c if c.is_alphabetic() || c == '_' => {
                    while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        self.bump();
                    }
                    let word = self.src.get(start..self.pos).unwrap_or("").to_string();
                    Tok::Ident(word)
                }
                '}' if !self.rest().contains("}}") => {
                    return Err(TemplateError::UnclosedAction { offset: open });
                }
                c => {
                    return Err(TemplateError::Unexpected {
                        found: format!("character {c:?}"),
                        offset: start,
                    });
                }
            };
            toks.push((tok, start));
        }
    }

    fn raw(&mut self, start: usize) -> Result<String, TemplateError> {
        let rest = self.rest();
        let Some(end) = rest.find('`') else {
            return Err(TemplateError::UnterminatedString { offset: start });
        };
        let s = rest.get(..end).unwrap_or("").to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn quoted(&mut self, start: usize) -> Result<String, TemplateError> {
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let esc_at = self.pos;
            let Some(c) = self.bump() else {
                return Err(TemplateError::UnterminatedString { offset: start });
            };
            match c {
                '"' => break,
                '\n' => return Err(TemplateError::UnterminatedString { offset: start }),
                '\\' => self.escape(esc_at, &mut bytes)?,
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        String::from_utf8(bytes).map_err(|_| TemplateError::InvalidUtf8 { offset: start })
    }

    /// One escape sequence after a backslash at `at`, as Go's `strconv.Unquote` reads them in a
    /// double-quoted string.
    fn escape(&mut self, at: usize, out: &mut Vec<u8>) -> Result<(), TemplateError> {
        let bad = |lexer: &Self| TemplateError::BadEscape {
            sequence: lexer.src.get(at..lexer.pos).unwrap_or("\\").to_string(),
            offset: at,
        };
        let Some(c) = self.bump() else {
            return Err(bad(self));
        };
        let simple = match c {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            return Ok(());
        }
        match c {
            'x' => {
                let v = self.digits(16, 2).ok_or_else(|| bad(self))?;
                out.push(u8::try_from(v).map_err(|_| bad(self))?);
            }
            '0'..='7' => {
                let first = c.to_digit(8).unwrap_or(0);
                let v = self.digits(8, 2).ok_or_else(|| bad(self))?;
                let v = first * 64 + v;
                out.push(u8::try_from(v).map_err(|_| bad(self))?);
            }
            'u' | 'U' => {
                let n = if c == 'u' { 4 } else { 8 };
                let v = self.digits(16, n).ok_or_else(|| bad(self))?;
                let ch = char::from_u32(v).ok_or_else(|| bad(self))?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            }
            _ => return Err(bad(self)),
        }
        Ok(())
    }

    /// Reads exactly `n` digits in `radix`.
    fn digits(&mut self, radix: u32, n: usize) -> Option<u32> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self.peek()?.to_digit(radix)?;
            self.bump();
            v = v.checked_mul(radix)?.checked_add(d)?;
        }
        Some(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'t> {
    toks: &'t [Spanned],
    i: usize,
    /// Offset of the action's `{{`, for errors at its end.
    open: usize,
}

impl<'t> Parser<'t> {
    fn new(toks: &'t [Spanned], open: usize) -> Self {
        Self { toks, i: 0, open }
    }

    fn peek(&self) -> Option<&'t Spanned> {
        self.toks.get(self.i)
    }

    fn action(&mut self) -> Result<Pipeline, TemplateError> {
        if self.toks.is_empty() {
            return Err(TemplateError::EmptyAction { offset: self.open });
        }
        let p = self.pipeline(0, self.open)?;
        if let Some((tok, off)) = self.peek() {
            return Err(TemplateError::Unexpected {
                found: describe(tok),
                offset: *off,
            });
        }
        Ok(p)
    }

    /// A pipeline up to the end of the action (depth 0) or to its closing `)` (left unconsumed).
    fn pipeline(&mut self, depth: usize, start: usize) -> Result<Pipeline, TemplateError> {
        let mut commands: Vec<Command> = Vec::new();
        let mut cmd_offsets = Vec::new();
        loop {
            let cmd_start = self
                .peek()
                .or_else(|| self.i.checked_sub(1).and_then(|i| self.toks.get(i)))
                .map(|(_, o)| *o)
                .unwrap_or(start);
            let cmd = self.command(depth, cmd_start)?;
            if !commands.is_empty() && matches!(cmd, Command::Value(_)) {
                return Err(TemplateError::NonExecutableCommand { offset: cmd_start });
            }
            commands.push(cmd);
            cmd_offsets.push(cmd_start);
            match self.peek() {
                Some((Tok::Pipe, _)) => self.i += 1,
                _ => break,
            }
        }
        for (idx, (cmd, off)) in commands.iter().zip(&cmd_offsets).enumerate() {
            if let Command::Call { func, args } = cmd {
                let got = args.len() + usize::from(idx > 0);
                if got != func.arity() {
                    return Err(TemplateError::WrongArgCount {
                        func: func.name(),
                        want: func.arity(),
                        got,
                        offset: *off,
                    });
                }
            }
        }
        Ok(Pipeline { commands })
    }

    fn command(&mut self, depth: usize, start: usize) -> Result<Command, TemplateError> {
        let first = match self.peek() {
            None | Some((Tok::Pipe, _)) | Some((Tok::RParen, _)) => {
                return Err(TemplateError::MissingCommand { offset: start });
            }
            Some(t) => t,
        };
        let head = match &first.0 {
            Tok::Ident(name) => {
                self.i += 1;
                Some(func_by_name(name, first.1)?)
            }
            _ => None,
        };
        let mut operands = Vec::new();
        while let Some((tok, off)) = self.peek() {
            match tok {
                Tok::Pipe | Tok::RParen => break,
                Tok::Ident(name) => {
                    func_by_name(name, *off)?;
                    return Err(TemplateError::BareFunctionArgument {
                        name: name.clone(),
                        offset: *off,
                    });
                }
                Tok::Str(s) => {
                    self.i += 1;
                    operands.push(Operand::Str(s.clone()));
                }
                Tok::LParen => {
                    if depth + 1 > MAX_NESTING {
                        return Err(TemplateError::TooDeep {
                            offset: *off,
                            max: MAX_NESTING,
                        });
                    }
                    self.i += 1;
                    let inner = self.pipeline(depth + 1, *off)?;
                    match self.peek() {
                        Some((Tok::RParen, _)) => self.i += 1,
                        _ => return Err(TemplateError::UnclosedParen { offset: *off }),
                    }
                    operands.push(Operand::Pipe(Box::new(inner)));
                }
            }
            if head.is_none() && operands.len() > 1 {
                return Err(TemplateError::ArgumentsToValue { offset: start });
            }
        }
        if depth == 0
            && let Some((Tok::RParen, off)) = self.peek()
        {
            return Err(TemplateError::Unexpected {
                found: "\")\" without a matching \"(\"".to_string(),
                offset: *off,
            });
        }
        match head {
            Some(func) => Ok(Command::Call {
                func,
                args: operands,
            }),
            None => match operands.pop() {
                Some(v) => Ok(Command::Value(v)),
                None => Err(TemplateError::MissingCommand { offset: start }),
            },
        }
    }
}

fn func_by_name(name: &str, offset: usize) -> Result<Func, TemplateError> {
    match name {
        "tag" => Ok(Func::Tag),
        "replace" => Ok(Func::Replace),
        "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block" | "break"
        | "continue" => Err(TemplateError::Unsupported {
            what: format!("control structures ({name:?})"),
            offset,
        }),
        "nil" | "true" | "false" => Err(TemplateError::Unsupported {
            what: format!("constants other than quoted strings ({name:?})"),
            offset,
        }),
        _ => Err(TemplateError::UnknownFunction {
            name: name.to_string(),
            offset,
        }),
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(n) => format!("identifier {n:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::LParen => "\"(\"".to_string(),
        Tok::RParen => "\")\" without a matching \"(\"".to_string(),
        Tok::Pipe => "\"|\"".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn svc() -> BTreeMap<String, String> {
        tags(&[
            ("kuma.io/service", "backend_api"),
            ("version", "v1"),
            ("kuma.io/zone", "zone-1"),
        ])
    }

    #[test]
    fn renders_the_reference_common_name() {
        assert_eq!(
            render("{{ tag \"kuma.io/service\" }}.mesh", &svc()).unwrap(),
            "backend_api.mesh"
        );
    }

    #[test]
    fn renders_plain_text() {
        assert_eq!(render("just-text.mesh", &svc()).unwrap(), "just-text.mesh");
        assert_eq!(render("", &svc()).unwrap(), "");
        assert_eq!(render("a } b }} c {", &svc()).unwrap(), "a } b }} c {");
    }

    #[test]
    fn renders_pipes_and_parens() {
        let t = svc();
        assert_eq!(
            render(r#"{{ tag "kuma.io/service" | replace "_" "-" }}.mesh"#, &t).unwrap(),
            "backend-api.mesh"
        );
        assert_eq!(
            render(r#"{{ replace "_" "-" (tag "kuma.io/service") }}"#, &t).unwrap(),
            "backend-api"
        );
        assert_eq!(
            render(
                r#"{{ tag "kuma.io/service" | replace "_" "-" | replace "api" "web" }}"#,
                &t
            )
            .unwrap(),
            "backend-web"
        );
        assert_eq!(
            render(r#"{{ "kuma.io/service" | tag }}"#, &t).unwrap(),
            "backend_api"
        );
        assert_eq!(
            render(r#"{{ ("version" | tag) }}-{{tag "kuma.io/zone"}}"#, &t).unwrap(),
            "v1-zone-1"
        );
        assert_eq!(
            render(
                r#"{{ replace (tag "version") (tag "kuma.io/zone") "xv1x" }}"#,
                &t
            )
            .unwrap(),
            "xzone-1x"
        );
        assert_eq!(render(r#"{{"lit"}}"#, &t).unwrap(), "lit");
        assert_eq!(render("{{`raw\\n`}}", &t).unwrap(), "raw\\n");
        assert_eq!(
            render("{{ tag\n\t\"version\" }}", &t).unwrap(),
            "v1",
            "newlines and tabs separate tokens"
        );
    }

    #[test]
    fn replace_replaces_all_and_handles_empty_old() {
        let t = tags(&[("a", "a_b_c")]);
        assert_eq!(
            render(r#"{{ tag "a" | replace "_" "" }}"#, &t).unwrap(),
            "abc"
        );
        assert_eq!(render(r#"{{ replace "" "-" "ab" }}"#, &t).unwrap(), "-a-b-");
    }

    #[test]
    fn string_escapes() {
        let t = BTreeMap::new();
        assert_eq!(render(r#"{{ "a\"b" }}"#, &t).unwrap(), "a\"b");
        assert_eq!(render(r#"{{ "a\\b" }}"#, &t).unwrap(), "a\\b");
        assert_eq!(render(r#"{{ "a\nb" }}"#, &t).unwrap(), "a\nb");
        assert_eq!(
            render(r#"{{ "\x41\101\u00e9\U0001F600\t" }}"#, &t).unwrap(),
            "AAé😀\t"
        );
        assert_eq!(
            render(r#"{{ "}}" }}"#, &t).unwrap(),
            "}}",
            "}} inside a string"
        );
        assert_eq!(render("{{ `a\"}}b` }}", &t).unwrap(), "a\"}}b");
        assert!(matches!(
            parse(r#"{{ "\q" }}"#),
            Err(TemplateError::BadEscape { ref sequence, offset: 4 }) if sequence == "\\q"
        ));
        assert!(matches!(
            parse(r#"{{ "\'" }}"#),
            Err(TemplateError::BadEscape { .. })
        ));
        assert!(matches!(
            parse(r#"{{ "\x4" }}"#),
            Err(TemplateError::BadEscape { .. })
        ));
        assert!(matches!(
            parse(r#"{{ "\777" }}"#),
            Err(TemplateError::BadEscape { .. })
        ));
        assert!(matches!(
            parse(r#"{{ "\uD800" }}"#),
            Err(TemplateError::BadEscape { .. })
        ));
        assert!(matches!(
            parse(r#"{{ "\xff" }}"#),
            Err(TemplateError::InvalidUtf8 { offset: 3 })
        ));
        assert!(matches!(
            parse(r#"{{ "abc\"#),
            Err(TemplateError::BadEscape { .. })
        ));
    }

    #[test]
    fn trim_markers() {
        let t = svc();
        assert_eq!(render("a  {{- \"b\" -}}  c", &t).unwrap(), "abc");
        assert_eq!(render("a \n{{- tag \"version\" }} c", &t).unwrap(), "av1 c");
    }

    #[test]
    fn missing_tag_is_a_render_error_naming_it() {
        let err = render(r#"{{ tag "kuma.io/service" }}"#, &BTreeMap::new()).unwrap_err();
        assert_eq!(err, TemplateError::MissingTag("kuma.io/service".into()));
        assert!(err.to_string().contains("\"kuma.io/service\""));
    }

    #[test]
    fn tags_used_lists_literal_names() {
        let t = parse(
            r#"{{ tag "b" }}{{ replace "_" "-" (tag "a") }}{{ "c" | tag }}{{ tag "a" }}{{ tag (tag "x") }}"#,
        )
        .unwrap();
        assert_eq!(t.tags_used(), vec!["a", "b", "c", "x"]);
        assert!(parse("text").unwrap().tags_used().is_empty());
    }

    #[test]
    fn parse_errors() {
        use TemplateError as E;
        let cases: Vec<(&str, E)> = vec![
            (
                "{{ foo \"a\" }}",
                E::UnknownFunction {
                    name: "foo".into(),
                    offset: 3,
                },
            ),
            (
                "{{ printf \"%s\" \"a\" }}",
                E::UnknownFunction {
                    name: "printf".into(),
                    offset: 3,
                },
            ),
            (
                "{{ $x }}",
                E::Unsupported {
                    what: "variables ($name)".into(),
                    offset: 3,
                },
            ),
            (
                "{{ .Name }}",
                E::Unsupported {
                    what: "fields and the dot (.Field, .)".into(),
                    offset: 3,
                },
            ),
            (
                "{{ if \"a\" }}x{{ end }}",
                E::Unsupported {
                    what: "control structures (\"if\")".into(),
                    offset: 3,
                },
            ),
            (
                "{{ range \"a\" }}",
                E::Unsupported {
                    what: "control structures (\"range\")".into(),
                    offset: 3,
                },
            ),
            ("{{ tag \"a\" ", E::UnclosedAction { offset: 0 }),
            ("abc {{", E::UnclosedAction { offset: 4 }),
            ("{{ tag \"a\" }", E::UnclosedAction { offset: 0 }),
            ("{{ }}", E::EmptyAction { offset: 0 }),
            ("{{}}", E::EmptyAction { offset: 0 }),
            (
                "{{ tag }}",
                E::WrongArgCount {
                    func: "tag",
                    want: 1,
                    got: 0,
                    offset: 3,
                },
            ),
            (
                "{{ tag \"a\" \"b\" }}",
                E::WrongArgCount {
                    func: "tag",
                    want: 1,
                    got: 2,
                    offset: 3,
                },
            ),
            (
                "{{ replace \"a\" \"b\" }}",
                E::WrongArgCount {
                    func: "replace",
                    want: 3,
                    got: 2,
                    offset: 3,
                },
            ),
            (
                "{{ tag \"x\" | replace \"a\" \"b\" \"c\" }}",
                E::WrongArgCount {
                    func: "replace",
                    want: 3,
                    got: 4,
                    offset: 13,
                },
            ),
            (
                "{{ \"x\" | tag \"y\" }}",
                E::WrongArgCount {
                    func: "tag",
                    want: 1,
                    got: 2,
                    offset: 9,
                },
            ),
            ("{{ tag \"a }}", E::UnterminatedString { offset: 7 }),
            ("{{ tag `a }}", E::UnterminatedString { offset: 7 }),
            ("{{ tag \"a\nb\" }}", E::UnterminatedString { offset: 7 }),
            ("{{ tag (\"a\" }}", E::UnclosedParen { offset: 7 }),
            (
                "{{ tag \"a\") }}",
                E::Unexpected {
                    found: "\")\" without a matching \"(\"".into(),
                    offset: 10,
                },
            ),
            ("{{ tag \"a\" | }}", E::MissingCommand { offset: 11 }),
            ("{{ | tag }}", E::MissingCommand { offset: 3 }),
            ("{{ () }}", E::MissingCommand { offset: 4 }),
            (
                "{{ replace \"a\" \"b\" tag }}",
                E::BareFunctionArgument {
                    name: "tag".into(),
                    offset: 19,
                },
            ),
            (
                "{{ replace \"a\" \"b\" bogus }}",
                E::UnknownFunction {
                    name: "bogus".into(),
                    offset: 19,
                },
            ),
            ("{{ \"a\" \"b\" }}", E::ArgumentsToValue { offset: 3 }),
            (
                "{{ tag \"a\" | \"b\" }}",
                E::NonExecutableCommand { offset: 13 },
            ),
            (
                "{{ 42 }}",
                E::Unsupported {
                    what: "numbers (arguments must be quoted strings)".into(),
                    offset: 3,
                },
            ),
            (
                "{{ 'a' }}",
                E::Unsupported {
                    what: "character constants ('x')".into(),
                    offset: 3,
                },
            ),
            (
                "{{ x := \"a\" }}",
                E::Unsupported {
                    what: "assignments (:=, =)".into(),
                    offset: 5,
                },
            ),
            (
                "{{ tag := \"a\" }}",
                E::Unsupported {
                    what: "assignments (:=, =)".into(),
                    offset: 7,
                },
            ),
            (
                "{{/* c */}}",
                E::Unsupported {
                    what: "comments (/* */)".into(),
                    offset: 2,
                },
            ),
            (
                "{{ true }}",
                E::Unsupported {
                    what: "constants other than quoted strings (\"true\")".into(),
                    offset: 3,
                },
            ),
            (
                "{{ tag \"a\" || tag \"b\" }}",
                E::Unsupported {
                    what: "\"||\" operators".into(),
                    offset: 11,
                },
            ),
            (
                "{{ tag ; }}",
                E::Unexpected {
                    found: "character ';'".into(),
                    offset: 7,
                },
            ),
        ];
        for (src, want) in cases {
            assert_eq!(parse(src), Err(want), "{src:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let msg = parse("{{ foo }}").unwrap_err().to_string();
        assert!(msg.contains("unknown function \"foo\""), "{msg}");
        assert!(msg.contains("only tag and replace are allowed"), "{msg}");
        let msg = parse("{{ tag \"a\"").unwrap_err().to_string();
        assert!(msg.contains("\"{{\"") && msg.contains("\"}}\""), "{msg}");
        let msg = parse("{{ tag }}").unwrap_err().to_string();
        assert!(
            msg.contains("tag") && msg.contains("want 1, got 0"),
            "{msg}"
        );
        let msg = parse("{{ $x }}").unwrap_err().to_string();
        assert!(msg.contains("variables"), "{msg}");
    }

    #[test]
    fn size_and_nesting_bounds() {
        let long = "a".repeat(MAX_TEMPLATE_LEN + 1);
        assert_eq!(
            parse(&long),
            Err(TemplateError::TooLong {
                len: MAX_TEMPLATE_LEN + 1,
                max: MAX_TEMPLATE_LEN
            })
        );
        assert!(parse(&"a".repeat(MAX_TEMPLATE_LEN)).is_ok());

        let nest = |n: usize| format!("{{{{ {}\"x\"{} }}}}", "(".repeat(n), ")".repeat(n));
        assert_eq!(render(&nest(MAX_NESTING), &BTreeMap::new()).unwrap(), "x");
        assert!(matches!(
            parse(&nest(MAX_NESTING + 1)),
            Err(TemplateError::TooDeep { .. })
        ));
        // Much deeper than allowed, closed or not: only a clean error.
        let deep = format!("{{{{ {}\"x\"{} }}}}", "(".repeat(500), ")".repeat(500));
        assert!(matches!(
            parse(&deep),
            Err(TemplateError::TooDeep {
                offset: 19,
                max: MAX_NESTING
            })
        ));
        assert!(parse(&"{{ (((((((((((((((((((((((((((((((((((((((((".repeat(20)).is_err());

        // Exponential growth through nested replace is stopped.
        let mut t = "\"abcdefghijklmnop\"".to_string();
        for _ in 0..10 {
            t = format!("(replace \"\" \"0123456789\" {t})");
        }
        let src = format!("{{{{ {t} }}}}");
        assert!(src.len() <= MAX_TEMPLATE_LEN);
        assert_eq!(
            render(&src, &BTreeMap::new()),
            Err(TemplateError::OutputTooLong {
                max: MAX_OUTPUT_LEN
            })
        );
    }

    #[test]
    fn non_ascii_and_odd_input_never_panics() {
        let inputs = [
            "{{ tag \"é\" }}",
            "{{ é }}",
            "{{",
            "}}",
            "{{{{",
            "{{-",
            "{{- }}",
            "{{ -}}",
            "{{ \"\\",
            "{{ \"\\u12",
            "{{ `",
            "\u{0}{{\u{0}}}",
            "{{ tag \"a\" -}}",
            "😀{{ \"😀\" }}😀",
        ];
        for src in inputs {
            let _ = render(src, &svc());
        }
        assert_eq!(render("😀{{ \"😀\" }}😀", &svc()).unwrap(), "😀😀😀");
        assert!(matches!(
            parse("{{ é }}"),
            Err(TemplateError::UnknownFunction { .. })
        ));
    }
}
