//! YAML with positions: every node knows its line and column, so every problem found in a
//! journey, template, scenario test or daemon config can point at the text that caused it.
//!
//! saphyr does the parsing; its tree is converted once into [`Node`], which keeps mapping
//! entries in file order with their key positions (saphyr's own mapping type hashes keys
//! and forgets where they were written).

use std::path::Path;

use saphyr::{LoadableYamlNode, MarkedYamlOwned, ScalarOwned, ScalarStyle, YamlDataOwned};
use serde_json::Value;

use crate::diagnostics::{Diagnostic, codes};
use crate::model::Pos;

/// A YAML node and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// Length in characters of the node's text when it is a scalar on one line, else 0:
    /// how much of the source line a diagnostic underlines.
    pub len: u32,
    pub value: NodeValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String, Style),
    Seq(Vec<Node>),
    /// Entries in file order. Keys are scalars, kept as written.
    Map(Vec<(Key, Node)>),
}

/// How a string scalar was written; the column of a character inside it depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    /// `'...'` or `"..."`: the text starts one column after the node.
    Quoted,
    /// `|`: the text starts on the next line, and each of its lines is a line of the file
    /// at the block's indentation.
    Literal,
    /// `>`: the text starts on the next line, its lines folded into one.
    Block,
}

/// A mapping key and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
    pub len: u32,
}

impl Node {
    /// A node with no position, for values built in code.
    pub fn new(value: NodeValue) -> Node {
        Node {
            pos: Pos::default(),
            len: 0,
            value,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            NodeValue::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            NodeValue::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, NodeValue::Null)
    }

    /// The value under `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key and value under `key` when this is a mapping.
    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, v)| (k, v))
    }

    /// What kind of value this is, for "expected X, found Y" messages.
    pub fn kind_name(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "nothing",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(..) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// The position of the character at `offset` (in characters) inside this string
    /// scalar, when it can be known: the scalar is on one line and has no escapes.
    /// Falls back to the node's own position.
    pub fn pos_at(&self, offset: usize) -> Pos {
        let NodeValue::Str(text, style) = &self.value else {
            return self.pos;
        };
        let shift = match style {
            Style::Plain => 0,
            Style::Quoted => 1,
            Style::Literal => {
                // Past the last line (the end of the text): the end of that line.
                let written = text.trim_end_matches('\n');
                let before: String = written.chars().take(offset).collect();
                let (lines, last) = match before.rsplit_once('\n') {
                    Some((earlier, last)) => (earlier.matches('\n').count() + 1, last),
                    None => (0, before.as_str()),
                };
                return Pos {
                    line: self.pos.line + to_u32(lines),
                    column: self.pos.column + to_u32(last.chars().count()),
                };
            }
            Style::Block => return self.pos,
        };
        let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
        // A quoted scalar written with escapes is longer than its text: offsets would lie.
        if self.len != chars + 2 * shift || text.contains('\n') {
            return self.pos;
        }
        let offset = u32::try_from(offset).unwrap_or(u32::MAX).min(chars);
        Pos {
            line: self.pos.line,
            column: self.pos.column + shift + offset,
        }
    }

    /// Converts to JSON: YAML integers stay integers, mappings keep their order.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            NodeValue::Str(s, _) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Builds a node tree from JSON, with no positions: lets code that holds a JSON value
    /// (an API request, a config already parsed) use the same parsers as files do.
    pub fn from_json(value: &Value) -> Node {
        Node::new(match value {
            Value::Null => NodeValue::Null,
            Value::Bool(b) => NodeValue::Bool(*b),
            Value::Number(n) => n.as_i64().map_or_else(
                || NodeValue::Float(n.as_f64().unwrap_or(f64::NAN)),
                NodeValue::Int,
            ),
            Value::String(s) => NodeValue::Str(s.clone(), Style::Plain),
            Value::Array(items) => NodeValue::Seq(items.iter().map(Node::from_json).collect()),
            Value::Object(map) => NodeValue::Map(
                map.iter()
                    .map(|(k, v)| {
                        let key = Key {
                            name: k.clone(),
                            pos: Pos::default(),
                            len: 0,
                        };
                        (key, Node::from_json(v))
                    })
                    .collect(),
            ),
        })
    }
}

/// Parses one YAML document. An empty document is [`NodeValue::Null`].
///
/// # Errors
/// A YAML syntax error (including a key written twice in one mapping, or a second
/// document), as a diagnostic against `file`.
pub fn parse(source: &str, file: &Path) -> Result<Node, Diagnostic> {
    let docs = MarkedYamlOwned::load_from_str(source).map_err(|e| {
        let mark = e.marker();
        let pos = Pos {
            line: to_u32(mark.line()),
            column: to_u32(mark.col()) + 1,
        };
        if e.info() == "duplicated key in mapping" {
            let key = key_text_at(source, mark.index());
            Diagnostic::error(
                file,
                pos,
                codes::DUPLICATE_KEY,
                format!("duplicate key `{key}`: each key may appear only once in a mapping"),
            )
            .with_len(to_u32(key.chars().count()))
        } else {
            Diagnostic::error(
                file,
                pos,
                codes::YAML_SYNTAX,
                format!("invalid YAML: {}", e.info()),
            )
        }
    })?;
    let mut docs = docs.into_iter();
    let Some(first) = docs.next() else {
        return Ok(Node::new(NodeValue::Null));
    };
    if let Some(second) = docs.next() {
        let node = convert(&second, source);
        // Point at the `---` that starts the second document, not at what follows it.
        let upto = usize::try_from(node.pos.line).unwrap_or(usize::MAX);
        let pos = source
            .lines()
            .take(upto)
            .enumerate()
            .filter(|(_, l)| l.starts_with("---"))
            .last()
            .map_or(node.pos, |(i, _)| Pos {
                line: to_u32(i + 1),
                column: 1,
            });
        return Err(Diagnostic::error(
            file,
            pos,
            codes::YAML_SYNTAX,
            "expected one YAML document, found several (`---`)",
        ));
    }
    Ok(convert(&first, source))
}

/// Parses YAML text straight to JSON, for files read as data (scenario tests, config).
///
/// # Errors
/// A YAML syntax error, positioned by line and column (no file name).
pub fn yaml_to_json(source: &str) -> Result<Value, Diagnostic> {
    parse(source, Path::new("")).map(|node| node.to_json())
}

/// Reads and parses a YAML file.
///
/// # Errors
/// The file cannot be read, or is not valid YAML.
pub fn parse_file(file: &Path) -> Result<Node, Diagnostic> {
    let source = std::fs::read_to_string(file).map_err(|e| {
        Diagnostic::error(
            file,
            Pos::default(),
            codes::IO,
            format!("cannot read file: {e}"),
        )
    })?;
    parse(&source, file)
}

/// The character offset in `text` of a 1-based `line` and `column`, as parsers of the
/// texts inside scalars (CEL, Liquid) report positions.
pub(crate) fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let before: usize = text
        .split('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.chars().count() + 1)
        .sum();
    before + column.saturating_sub(1)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The key as written at character `index` of `source`, for the duplicate-key message
/// (saphyr reports where the duplicate starts, not what it is).
fn key_text_at(source: &str, index: usize) -> String {
    let rest: String = source.chars().skip(index).take(200).collect();
    let rest = rest.lines().next().unwrap_or_default();
    let key = rest.split(':').next().unwrap_or_default().trim();
    key.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

fn convert(node: &MarkedYamlOwned, source: &str) -> Node {
    let start = node.span.start;
    let end = node.span.end;
    let pos = Pos {
        line: to_u32(start.line()),
        column: to_u32(start.col()) + 1,
    };
    let len = if start.line() == end.line() && end.index() > start.index() {
        to_u32(end.index() - start.index())
    } else {
        0
    };
    let value = match &node.data {
        YamlDataOwned::Value(scalar) => scalar_value(scalar, Style::Plain),
        YamlDataOwned::Representation(text, style, _) => {
            NodeValue::Str(text.clone(), style_of(*style))
        }
        YamlDataOwned::Sequence(items) => {
            NodeValue::Seq(items.iter().map(|item| convert(item, source)).collect())
        }
        YamlDataOwned::Mapping(entries) => NodeValue::Map(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = convert(k, source);
                    let name = match &key.value {
                        NodeValue::Str(s, _) => s.clone(),
                        NodeValue::Null => "null".to_owned(),
                        NodeValue::Bool(b) => b.to_string(),
                        NodeValue::Int(i) => i.to_string(),
                        NodeValue::Float(f) => f.to_string(),
                        NodeValue::Seq(_) | NodeValue::Map(_) => "<complex key>".to_owned(),
                    };
                    (
                        Key {
                            name,
                            pos: key.pos,
                            len: key.len,
                        },
                        convert(v, source),
                    )
                })
                .collect(),
        ),
        YamlDataOwned::Tagged(_, inner) => return convert(inner, source),
        YamlDataOwned::Alias(_) | YamlDataOwned::BadValue => NodeValue::Null,
    };
    // saphyr resolves scalars without their style; recover quoting from the source span
    // length so that positions inside quoted strings can be computed.
    let value = match value {
        NodeValue::Str(text, Style::Plain) => {
            let chars = to_u32(text.chars().count());
            let style = if len == 0 && chars > 0 {
                block_style(source, pos.line)
            } else if len >= chars + 2 {
                Style::Quoted
            } else {
                Style::Plain
            };
            NodeValue::Str(text, style)
        }
        other => other,
    };
    Node { pos, len, value }
}

fn scalar_value(scalar: &ScalarOwned, style: Style) -> NodeValue {
    match scalar {
        ScalarOwned::Null => NodeValue::Null,
        ScalarOwned::Boolean(b) => NodeValue::Bool(*b),
        ScalarOwned::Integer(i) => NodeValue::Int(*i),
        ScalarOwned::FloatingPoint(f) => NodeValue::Float(f.into_inner()),
        ScalarOwned::String(s) => NodeValue::Str(s.clone(), style),
    }
}

fn style_of(style: ScalarStyle) -> Style {
    match style {
        ScalarStyle::Plain => Style::Plain,
        ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => Style::Quoted,
        ScalarStyle::Literal => Style::Literal,
        ScalarStyle::Folded => Style::Block,
    }
}

/// The style of a block scalar whose text starts on line `line` (saphyr resolves scalars
/// without it): `|` when the line before ends in a literal indicator (`|`, `|-`, `|2`,
/// before any comment), else folded.
fn block_style(source: &str, line: u32) -> Style {
    let header = usize::try_from(line)
        .ok()
        .and_then(|line| line.checked_sub(2))
        .and_then(|index| source.lines().nth(index))
        .unwrap_or_default();
    let header = header.split(" #").next().unwrap_or_default();
    match header.split_whitespace().last() {
        Some(indicator) if indicator.starts_with('|') => Style::Literal,
        _ => Style::Block,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_ok(src: &str) -> Node {
        parse(src, Path::new("t.yaml")).unwrap()
    }

    /// An offset into a `|` block's text is a line and column of the file; a `>` block's
    /// lines are folded, so its offsets point at the block's start.
    #[test]
    fn offsets_into_a_literal_block_find_their_line() {
        let node = parse_ok("where: |\n  a &&\n    b.c > 1\nother: >\n  x\n  y\n");
        let literal = node.get("where").unwrap();
        assert_eq!(literal.pos, Pos { line: 2, column: 3 });
        // `b` of `b.c`: the second line of the text, two spaces in.
        assert_eq!(literal.pos_at(7), Pos { line: 3, column: 5 });
        // The end of the text: the end of its last line, not the line after.
        assert_eq!(
            literal.pos_at(100),
            Pos {
                line: 3,
                column: 12
            }
        );
        let folded = node.get("other").unwrap();
        assert_eq!(folded.pos_at(2), folded.pos);
    }

    #[test]
    fn positions_are_one_based() {
        let node = parse_ok("a: 1\nsteps:\n  first:\n    wait: \"1h\"\n");
        let (key, value) = node.get("steps").unwrap().entry("first").unwrap();
        assert_eq!(key.pos, Pos { line: 3, column: 3 });
        let (wait_key, wait) = value.entry("wait").unwrap();
        assert_eq!(wait_key.pos, Pos { line: 4, column: 5 });
        assert_eq!(
            wait.pos,
            Pos {
                line: 4,
                column: 11
            }
        );
        assert_eq!(
            wait.pos_at(1),
            Pos {
                line: 4,
                column: 13
            }
        );
    }

    #[test]
    fn plain_scalar_offsets_and_types() {
        let node = parse_ok("where: event.total > 0\nn: 3\nf: 1.5\nb: true\nz:\n");
        let w = node.get("where").unwrap();
        assert_eq!(
            w.pos_at(6),
            Pos {
                line: 1,
                column: 14
            }
        );
        assert_eq!(
            node.to_json(),
            json!({"where": "event.total > 0", "n": 3, "f": 1.5, "b": true, "z": null})
        );
    }

    #[test]
    fn reports_syntax_errors_and_duplicate_keys_with_positions() {
        let err = parse("a: [1, 2\n", Path::new("t.yaml")).unwrap_err();
        assert_eq!(err.code, codes::YAML_SYNTAX);
        let err = parse("steps:\n  a: 1\n  a: 2\n", Path::new("t.yaml")).unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, column: 3 });
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
    }

    #[test]
    fn json_round_trip() {
        let v = json!({"max": 3, "per": "7d", "list": [1, "x", null]});
        assert_eq!(Node::from_json(&v).to_json(), v);
    }
}
