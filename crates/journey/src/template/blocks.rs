//! `for` and `tablerow`, as Liquid's own (liquid-lib's, whose parsing this follows), but
//! with each iteration's names in a [`LoopFrame`], so that a loop variable reads as
//! leniently as the context: `{{ item.price | default: 0 }}` for an item without a price.

use std::fmt;
use std::io::Write;

use liquid_core::error::{ResultLiquidExt, ResultLiquidReplaceExt};
use liquid_core::model::Scalar;
use liquid_core::parser::{BlockElement, TryMatchToken};
use liquid_core::runtime::{Interrupt, InterruptRegister};
use liquid_core::{
    BlockReflection, Error, Expression, Language, Object, ParseBlock, Renderable, Result, Runtime,
    TagBlock, TagTokenIter, Template, Value, ValueCow, ValueView,
};

use super::scope::LoopFrame;

/// `{% for item in items limit: 2 offset: 1 reversed %} … {% else %} … {% endfor %}`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ForBlock;

impl BlockReflection for ForBlock {
    fn start_tag(&self) -> &str {
        "for"
    }
    fn end_tag(&self) -> &str {
        "endfor"
    }
    fn description(&self) -> &str {
        "Renders its body once for each item of an array (or key and value of an object)."
    }
}

impl ParseBlock for ForBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let (var_name, range) = loop_head(&mut arguments)?;
        let (mut limit, mut offset, mut reversed) = (None, None, false);
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "limit" => limit = Some(parse_attr(&mut arguments)?),
                "offset" => offset = Some(parse_attr(&mut arguments)?),
                "reversed" => reversed = true,
                _ => {
                    return token
                        .raise_custom_error("\"limit\", \"offset\" or \"reversed\" expected.")
                        .into_err();
                }
            }
        }
        arguments.expect_nothing()?;

        let mut item_template = Vec::new();
        let mut else_template = None;
        while let Some(element) = tokens.next()? {
            match element {
                BlockElement::Tag(mut tag) => match tag.name() {
                    "else" => {
                        tag.tokens().expect_nothing()?;
                        else_template = Some(Template::new(tokens.parse_all(options)?));
                        break;
                    }
                    _ => item_template.push(tag.parse(&mut tokens, options)?),
                },
                element => item_template.push(element.parse(&mut tokens, options)?),
            }
        }
        tokens.assert_empty();
        Ok(Box::new(For {
            var_name,
            range,
            item_template: Template::new(item_template),
            else_template,
            limit,
            offset,
            reversed,
        }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct For {
    var_name: String,
    range: RangeExpression,
    item_template: Template,
    else_template: Option<Template>,
    limit: Option<Expression>,
    offset: Option<Expression>,
    reversed: bool,
}

impl fmt::Display for For {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{% for {} in {}", self.var_name, self.range)?;
        if let Some(limit) = &self.limit {
            write!(f, " limit:{limit}")?;
        }
        if let Some(offset) = &self.offset {
            write!(f, " offset:{offset}")?;
        }
        if self.reversed {
            f.write_str(" reversed")?;
        }
        f.write_str(" %}")
    }
}

impl Renderable for For {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let range = self
            .range
            .evaluate(runtime)
            .trace_with(|| self.to_string().into())?;
        let mut items = window(range.items()?, &self.limit, &self.offset, runtime)?;
        if self.reversed {
            items.reverse();
        }
        if items.is_empty() {
            if let Some(else_template) = &self.else_template {
                else_template
                    .render_to(writer, runtime)
                    .trace("{% else %}")
                    .trace_with(|| self.to_string().into())?;
            }
            return Ok(());
        }

        let parentloop = runtime
            .try_get(&[Scalar::new("forloop")])
            .map(ValueCow::into_owned);
        let len = items.len();
        for (i, item) in items.iter().enumerate() {
            let mut forloop = counters(i, len);
            if let Some(parentloop) = &parentloop {
                forloop.insert("parentloop".into(), parentloop.clone());
            }
            let scope = LoopFrame::new(
                runtime,
                [(self.var_name.as_str(), item), ("forloop", &forloop)],
            );
            self.item_template
                .render_to(writer, &scope)
                .trace_with(|| self.to_string().into())
                .context_key("index")
                .value_with(|| (i + 1).to_string().into())?;
            // At the end of the body a `continue` needs no more than clearing.
            let interrupt = scope.registers().get_mut::<InterruptRegister>().reset();
            if interrupt == Some(Interrupt::Break) {
                break;
            }
        }
        Ok(())
    }
}

/// `{% tablerow item in items cols: 3 limit: 6 offset: 1 %} … {% endtablerow %}`.
#[derive(Debug, Clone, Copy)]
pub(super) struct TableRowBlock;

impl BlockReflection for TableRowBlock {
    fn start_tag(&self) -> &str {
        "tablerow"
    }
    fn end_tag(&self) -> &str {
        "endtablerow"
    }
    fn description(&self) -> &str {
        "Renders an HTML table's rows and cells, one cell for each item of an array."
    }
}

impl ParseBlock for TableRowBlock {
    fn parse(
        &self,
        mut arguments: TagTokenIter<'_>,
        mut tokens: TagBlock<'_, '_>,
        options: &Language,
    ) -> Result<Box<dyn Renderable>> {
        let (var_name, range) = loop_head(&mut arguments)?;
        let (mut cols, mut limit, mut offset) = (None, None, None);
        while let Some(token) = arguments.next() {
            match token.as_str() {
                "cols" => cols = Some(parse_attr(&mut arguments)?),
                "limit" => limit = Some(parse_attr(&mut arguments)?),
                "offset" => offset = Some(parse_attr(&mut arguments)?),
                _ => {
                    return token
                        .raise_custom_error("\"cols\", \"limit\" or \"offset\" expected.")
                        .into_err();
                }
            }
        }
        arguments.expect_nothing()?;
        let item_template = Template::new(tokens.parse_all(options)?);
        tokens.assert_empty();
        Ok(Box::new(TableRow {
            var_name,
            range,
            item_template,
            cols,
            limit,
            offset,
        }))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct TableRow {
    var_name: String,
    range: RangeExpression,
    item_template: Template,
    cols: Option<Expression>,
    limit: Option<Expression>,
    offset: Option<Expression>,
}

impl fmt::Display for TableRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{% tablerow {} in {}", self.var_name, self.range)?;
        for (name, attr) in [
            ("cols", &self.cols),
            ("limit", &self.limit),
            ("offset", &self.offset),
        ] {
            if let Some(attr) = attr {
                write!(f, " {name}:{attr}")?;
            }
        }
        f.write_str(" %}")
    }
}

impl Renderable for TableRow {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> Result<()> {
        let range = self
            .range
            .evaluate(runtime)
            .trace_with(|| self.to_string().into())?;
        let items = window(range.items()?, &self.limit, &self.offset, runtime)?;
        let len = items.len();
        let cols = count(&self.cols, runtime)?
            .filter(|&cols| cols > 0)
            .unwrap_or(len);
        for (i, item) in items.iter().enumerate() {
            let (row, col) = (i / cols, i % cols);
            let mut tablerow = counters(i, len);
            let col_last = col + 1 == cols || i + 1 == len;
            for (name, value) in [
                ("col0", Value::scalar(whole(col))),
                ("col", Value::scalar(whole(col + 1))),
                ("col_first", Value::scalar(col == 0)),
                ("col_last", Value::scalar(col_last)),
            ] {
                tablerow.insert(name.into(), value);
            }
            if col == 0 {
                write!(writer, "<tr class=\"row{}\">", row + 1).replace("Failed to render")?;
            }
            write!(writer, "<td class=\"col{}\">", col + 1).replace("Failed to render")?;
            let scope = LoopFrame::new(
                runtime,
                [(self.var_name.as_str(), item), ("tablerow", &tablerow)],
            );
            self.item_template
                .render_to(writer, &scope)
                .trace_with(|| self.to_string().into())
                .context_key("index")
                .value_with(|| (i + 1).to_string().into())?;
            write!(writer, "</td>").replace("Failed to render")?;
            if col_last {
                write!(writer, "</tr>").replace("Failed to render")?;
            }
        }
        Ok(())
    }
}

/// `NAME in RANGE`, where RANGE is a value or `(START..END)`.
fn loop_head(arguments: &mut TagTokenIter<'_>) -> Result<(String, RangeExpression)> {
    let var_name = arguments
        .expect_next("Identifier expected.")?
        .expect_identifier()
        .into_result()?
        .to_owned();
    arguments
        .expect_next("\"in\" expected.")?
        .expect_str("in")
        .into_result_custom_msg("\"in\" expected.")?;
    let range = arguments.expect_next("Array or range expected.")?;
    let range = match range.expect_value() {
        TryMatchToken::Matches(array) => RangeExpression::Array(array),
        TryMatchToken::Fails(range) => match range.expect_range() {
            TryMatchToken::Matches((start, stop)) => RangeExpression::Counted(start, stop),
            TryMatchToken::Fails(range) => return range.raise_error().into_err(),
        },
    };
    Ok((var_name, range))
}

/// `: VALUE` after an attribute's name.
fn parse_attr(arguments: &mut TagTokenIter<'_>) -> Result<Expression> {
    arguments
        .expect_next("\":\" expected.")?
        .expect_str(":")
        .into_result_custom_msg("\":\" expected.")?;
    arguments
        .expect_next("Value expected.")?
        .expect_value()
        .into_result()
}

#[derive(Debug)]
enum RangeExpression {
    Array(Expression),
    Counted(Expression, Expression),
}

impl fmt::Display for RangeExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeExpression::Array(array) => write!(f, "{array}"),
            RangeExpression::Counted(start, end) => write!(f, "({start}..{end})"),
        }
    }
}

enum Range<'r> {
    Array(ValueCow<'r>),
    Counted(i64, i64),
}

impl RangeExpression {
    fn evaluate<'r>(&'r self, runtime: &'r dyn Runtime) -> Result<Range<'r>> {
        Ok(match self {
            RangeExpression::Array(array) => Range::Array(array.evaluate(runtime)?),
            RangeExpression::Counted(start, end) => Range::Counted(
                integer(start, runtime, "start")?,
                integer(end, runtime, "end")?,
            ),
        })
    }
}

impl Range<'_> {
    /// The items: an array's, an object's `[key, value]` pairs in key order, none for nil
    /// (a missing array is an empty one).
    fn items(&self) -> Result<Vec<ValueCow<'_>>> {
        match self {
            Range::Array(value) => {
                let value = value.as_view();
                if let Some(array) = value.as_array() {
                    Ok(array.values().map(ValueCow::Borrowed).collect())
                } else if let Some(object) = value.as_object() {
                    // In key order: Liquid's objects are hash maps, in no fixed order.
                    let mut pairs: Vec<_> = object.iter().collect();
                    pairs.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
                    Ok(pairs
                        .into_iter()
                        .map(|(k, v)| {
                            let pair = vec![Value::scalar(k.into_owned()), v.to_value()];
                            ValueCow::Owned(Value::Array(pair))
                        })
                        .collect())
                } else if value.is_state() || value.is_nil() {
                    Ok(Vec::new())
                } else {
                    Err(expected("array", value))
                }
            }
            Range::Counted(start, end) => Ok((*start..=*end)
                .map(|x| ValueCow::Owned(Value::scalar(x)))
                .collect()),
        }
    }
}

/// `items` after `offset` (default none), at most `limit` of them (default all).
fn window<'i>(
    items: Vec<ValueCow<'i>>,
    limit: &Option<Expression>,
    offset: &Option<Expression>,
    runtime: &dyn Runtime,
) -> Result<Vec<ValueCow<'i>>> {
    let limit = count(limit, runtime)?.unwrap_or(usize::MAX);
    let offset = count(offset, runtime)?.unwrap_or(0);
    Ok(items.into_iter().skip(offset).take(limit).collect())
}

/// A loop's counters for item `i` of `len`, as Liquid names them.
fn counters(i: usize, len: usize) -> Object {
    Object::from_iter([
        ("length".into(), Value::scalar(whole(len))),
        ("index0".into(), Value::scalar(whole(i))),
        ("index".into(), Value::scalar(whole(i + 1))),
        ("rindex0".into(), Value::scalar(whole(len - i - 1))),
        ("rindex".into(), Value::scalar(whole(len - i))),
        ("first".into(), Value::scalar(i == 0)),
        ("last".into(), Value::scalar(i + 1 == len)),
    ])
}

fn whole(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn integer(expression: &Expression, runtime: &dyn Runtime, name: &str) -> Result<i64> {
    let value = expression.evaluate(runtime)?;
    value
        .as_scalar()
        .and_then(|s| s.to_integer())
        .ok_or_else(|| expected("whole number", value.as_view()))
        .context_key_with(|| name.to_owned().into())
        .value_with(|| value.to_kstr().into_owned())
}

/// A `limit`, `offset` or `cols`: a whole number not below zero.
fn count(attr: &Option<Expression>, runtime: &dyn Runtime) -> Result<Option<usize>> {
    let Some(attr) = attr else {
        return Ok(None);
    };
    let value = attr.evaluate(runtime)?;
    value
        .as_scalar()
        .and_then(|s| s.to_integer())
        .and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| expected("whole number", value.as_view()))
}

fn expected(what: &str, found: &dyn ValueView) -> Error {
    Error::with_msg(format!("Expected {what}, found `{}`", found.type_name()))
}
