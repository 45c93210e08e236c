//! CEL expressions: compiled once at load, evaluated per customer.
//!
//! A missing trait or property reads as `null`, and comparing `null` with anything but
//! `null` is `false`, as the language promises marketers ("a missing trait is null and any
//! comparison with it is false"). CEL itself raises an error for both, and an error would
//! spread through `!`, `&&`, `||` and `?:` and make `!(profile.age > 3)` false. So each
//! expression is rewritten once, at compile time, onto CEL's own building blocks (see
//! `null_safe`). Any other runtime error (a type mismatch, arithmetic on `null`) still
//! makes a condition false and a computed value absent.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::common::ast::{
    CallExpr, EntryExpr, Expr as Node, IdedExpr, LiteralValue, SelectExpr, operators,
};
use cel::common::types::{self, CelBool, CelNull, CelString};
use cel::common::value::CowVal;
use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, ExecutionError, Value as CelValue};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::duration::{parse_duration, window_start};
use crate::model::{Pos, Segments};

/// The variables an expression may name.
pub const VARIABLES: [&str; 4] = ["profile", "event", "trigger", "now"];

/// A function over the customer's history that expressions may call.
#[derive(Debug, Clone, Copy)]
pub struct HistoryFunction {
    pub name: &'static str,
    /// The parameters, as a signature shows them: those after `required` are optional.
    pub params: &'static [&'static str],
    pub required: usize,
    /// Which parameter, if any, is a time window such as `"30d"`.
    pub window: Option<usize>,
}

/// The functions over the customer's history that expressions may call.
pub const HISTORY_FUNCTIONS: [HistoryFunction; 5] = [
    HistoryFunction {
        name: "did",
        params: &["event", "window"],
        required: 1,
        window: Some(1),
    },
    HistoryFunction {
        name: "count",
        params: &["event", "window"],
        required: 1,
        window: Some(1),
    },
    HistoryFunction {
        name: "sum",
        params: &["event", "property", "window"],
        required: 2,
        window: Some(2),
    },
    HistoryFunction {
        name: "in_segment",
        params: &["segment"],
        required: 1,
        window: None,
    },
    HistoryFunction {
        name: "anniversary",
        params: &["date"],
        required: 1,
        window: None,
    },
];

/// Comparisons that are `false`, not an error, when an operand is `null`, each standing
/// in for CEL's operator of the same meaning. CEL's interpreter evaluates its operators
/// itself, before any overload; these are ordinary overloads under names no expression
/// can spell (`@` starts no identifier), so only [`null_safe`] can call them.
const NULL_SAFE_OPERATORS: [(&str, &str, cel::common::functions::Function); 6] = [
    (operators::LESS, "@null_safe_less", null_safe_less),
    (
        operators::LESS_EQUALS,
        "@null_safe_less_equals",
        null_safe_less_equals,
    ),
    (operators::GREATER, "@null_safe_greater", null_safe_greater),
    (
        operators::GREATER_EQUALS,
        "@null_safe_greater_equals",
        null_safe_greater_equals,
    ),
    (
        operators::NOT_EQUALS,
        "@null_safe_not_equals",
        null_safe_not_equals,
    ),
    (operators::IN, "@null_safe_in", null_safe_in),
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    for (_, name, function) in NULL_SAFE_OPERATORS {
        env.add_overload(name, name, vec![types::DYN_TYPE, types::DYN_TYPE], function)
            .expect("the null-safe operators are declared once, under names of their own");
    }
    Arc::new(env)
});

/// A compiled CEL expression and where it was written.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    /// The expression as parsed, then rewritten by [`null_safe`].
    expression: Arc<IdedExpr>,
    uses: Uses,
    pub pos: Pos,
}

/// What an expression refers to, so that evaluating it builds only that: most conditions
/// read one variable and call no history function.
#[derive(Debug, Clone, Copy)]
struct Uses {
    profile: bool,
    event: bool,
    trigger: bool,
    history: bool,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

/// Why an expression does not compile; `offset` is the 0-based character offset of the
/// problem within the expression's source where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    pub offset: Option<usize>,
}

impl Expr {
    /// Parses `source` and checks that every function it calls exists, and that the
    /// history functions get as many arguments as they take and windows that parse.
    ///
    /// # Errors
    /// A syntax error, a call to a function that is neither CEL's nor one of
    /// [`HISTORY_FUNCTIONS`], or a bad call to one of those.
    pub fn compile(source: &str, pos: Pos) -> Result<Expr, ExprError> {
        let program = ENV.compile(source).map_err(|errors| {
            let first = errors.errors.first();
            ExprError {
                message: first.map_or_else(
                    || "invalid expression".to_owned(),
                    |e| format!("invalid expression `{source}`: {}", e.msg),
                ),
                // An expression written over several lines (a `|` block) counts the
                // lines before.
                offset: first.and_then(|e| {
                    let (line, column) = e.pos;
                    let (line, column) =
                        (usize::try_from(line).ok()?, usize::try_from(column).ok()?);
                    Some(crate::yaml::offset_of(source, line, column))
                }),
            }
        })?;
        for name in program.references().functions() {
            let known = is_cel_function(name)
                || HISTORY_FUNCTIONS.iter().any(|f| f.name == name)
                || is_builtin_macro_or_operator(name);
            if !known {
                return Err(ExprError {
                    message: format!("unknown function `{name}` in `{source}`"),
                    offset: source.find(name).and_then(|at| char_offset(source, at)),
                });
            }
        }
        check_variables(program.expression(), source)?;
        check_history_calls(program.expression(), source, &|id| {
            let (start, _) = program.source_info().offset_for(id)?;
            usize::try_from(start).ok()
        })?;
        let references = program.references();
        let uses = Uses {
            profile: references.has_variable("profile"),
            event: references.has_variable("event"),
            trigger: references.has_variable("trigger"),
            history: HISTORY_FUNCTIONS
                .iter()
                .any(|f| references.has_function(f.name)),
        };
        Ok(Expr {
            source: source.into(),
            expression: Arc::new(null_safe(program.expression().clone())),
            uses,
            pos,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The segment names this expression passes to `in_segment` as string literals.
    pub fn segment_references(&self) -> Vec<String> {
        string_arguments_of(&self.source, "in_segment")
    }

    /// Evaluates to a JSON value, or `None` when evaluation fails.
    pub fn eval(&self, scope: &Scope<'_>) -> Option<Value> {
        self.eval_cel(scope).ok().and_then(|v| cel_to_json(&v))
    }

    /// Evaluates as a condition: true only when the result is the boolean `true`.
    pub fn holds(&self, scope: &Scope<'_>) -> bool {
        matches!(self.eval_cel(scope), Ok(CelValue::Bool(true)))
    }

    fn eval_cel(&self, scope: &Scope<'_>) -> Result<CelValue, ExecutionError> {
        let uses = self.uses;
        let mut ctx = if uses.history {
            // `in_segment` evaluates segment conditions over the profile: always bind it.
            context(scope, json_map_to_cel(scope.profile), 0)
        } else {
            let mut ctx = Context::with_env(ENV.clone());
            ctx.add_variable_from_value("now", CelValue::Timestamp(scope.now.fixed_offset()));
            if uses.profile {
                ctx.add_variable_from_value("profile", json_map_to_cel(scope.profile));
            }
            ctx
        };
        if uses.event {
            ctx.add_variable_from_value("event", json_map_to_cel(scope.event));
        }
        if uses.trigger {
            ctx.add_variable_from_value("trigger", json_map_to_cel(scope.trigger));
        }
        self.run(&ctx)
    }

    fn run(&self, ctx: &Context<'_, '_>) -> Result<CelValue, ExecutionError> {
        CelValue::resolve(&self.expression, ctx)
    }
}

/// What an expression is evaluated over.
#[derive(Clone)]
pub struct Scope<'a> {
    pub profile: &'a Map<String, Value>,
    pub event: &'a Map<String, Value>,
    pub trigger: &'a Map<String, Value>,
    pub now: DateTime<Utc>,
    /// The customer's time zone, for `anniversary`.
    pub timezone: Tz,
    pub history: Arc<dyn History>,
    pub segments: Arc<Segments>,
}

/// The customer's own event history, as the history functions see it.
///
/// # Contract
/// Implementations answer over every event received for the customer at or before the
/// evaluation's `now`; `since` is inclusive. They must stay fast for thousands of events.
pub trait History: Send + Sync {
    /// How many events named `event` at or after `since` (all of them when `None`).
    fn count(&self, event: &str, since: Option<DateTime<Utc>>) -> u64;
    /// The sum of the numeric property `property` over those events; others count as 0.
    fn sum(&self, event: &str, property: &str, since: Option<DateTime<Utc>>) -> f64;
}

/// A history with no events.
pub struct NoHistory;

impl History for NoHistory {
    fn count(&self, _: &str, _: Option<DateTime<Utc>>) -> u64 {
        0
    }
    fn sum(&self, _: &str, _: &str, _: Option<DateTime<Utc>>) -> f64 {
        0.0
    }
}

/// The body of one of the history functions registered on a CEL context.
type HistoryFn = Box<dyn Fn(&[CelValue]) -> Result<CelValue, ExecutionError> + Send + Sync>;

/// Segment conditions may refer to other segments; the checker refuses cycles, this
/// bound only keeps a bug from recursing forever.
const MAX_SEGMENT_DEPTH: usize = 16;

fn context(scope: &Scope<'_>, profile: CelValue, depth: usize) -> Context<'static, 'static> {
    let mut ctx = Context::with_env(ENV.clone());
    ctx.add_variable_from_value("profile", profile.clone());
    ctx.add_variable_from_value("now", CelValue::Timestamp(scope.now.fixed_offset()));

    let now = scope.now;
    let since = move |window: Option<&CelValue>| -> Result<Option<DateTime<Utc>>, ExecutionError> {
        match window {
            None => Ok(None),
            Some(CelValue::String(s)) => parse_duration(s)
                .map(|d| window_start(now, d))
                .map_err(|e| ExecutionError::function_error("window", e)),
            Some(CelValue::Duration(d)) => Ok(window_start(now, *d)),
            Some(other) => Err(ExecutionError::function_error(
                "window",
                format!("expected a duration like \"30d\", got {other:?}"),
            )),
        }
    };

    let history = scope.history.clone();
    let add = |ctx: &mut Context<'static, 'static>, name: &str, f: HistoryFn| {
        let name_owned = name.to_owned();
        ctx.add_function(
            name,
            move |cel::extractors::Arguments(args): cel::extractors::Arguments| {
                let _ = &name_owned;
                f(&args)
            },
        )
        .expect("history functions do not clash with CEL's own");
    };

    {
        let history = history.clone();
        add(
            &mut ctx,
            "did",
            Box::new(move |args| {
                let event = string_arg(args, 0, "did")?;
                Ok(CelValue::Bool(
                    history.count(&event, since(args.get(1))?) > 0,
                ))
            }),
        );
    }
    {
        let history = history.clone();
        add(
            &mut ctx,
            "count",
            Box::new(move |args| {
                let event = string_arg(args, 0, "count")?;
                let n = history.count(&event, since(args.get(1))?);
                Ok(CelValue::Int(i64::try_from(n).unwrap_or(i64::MAX)))
            }),
        );
    }
    {
        let history = history.clone();
        add(
            &mut ctx,
            "sum",
            Box::new(move |args| {
                let event = string_arg(args, 0, "sum")?;
                let property = string_arg(args, 1, "sum")?;
                Ok(CelValue::Float(history.sum(
                    &event,
                    &property,
                    since(args.get(2))?,
                )))
            }),
        );
    }
    {
        let tz = scope.timezone;
        add(
            &mut ctx,
            "anniversary",
            Box::new(move |args| {
                Ok(CelValue::Bool(
                    args.first().is_some_and(|v| is_anniversary(v, now, tz)),
                ))
            }),
        );
    }
    {
        let scope_parts = (
            scope.history.clone(),
            scope.segments.clone(),
            scope.timezone,
        );
        add(
            &mut ctx,
            "in_segment",
            Box::new(move |args| {
                let name = string_arg(args, 0, "in_segment")?;
                let (history, segments, timezone) = &scope_parts;
                let Some(segment) = segments.get(&name) else {
                    return Err(ExecutionError::function_error(
                        "in_segment",
                        format!("unknown segment {name}"),
                    ));
                };
                if depth >= MAX_SEGMENT_DEPTH {
                    return Err(ExecutionError::function_error(
                        "in_segment",
                        "segments refer to each other in a cycle",
                    ));
                }
                let empty = Map::new();
                let inner = Scope {
                    profile: &empty,
                    event: &empty,
                    trigger: &empty,
                    now,
                    timezone: *timezone,
                    history: history.clone(),
                    segments: segments.clone(),
                };
                let mut ctx = context(&inner, profile.clone(), depth + 1);
                ctx.add_variable_from_value(
                    "event",
                    CelValue::Map(CelMap::from(HashMap::<Key, CelValue>::new())),
                );
                ctx.add_variable_from_value(
                    "trigger",
                    CelValue::Map(CelMap::from(HashMap::<Key, CelValue>::new())),
                );
                Ok(CelValue::Bool(matches!(
                    segment.condition.run(&ctx),
                    Ok(CelValue::Bool(true))
                )))
            }),
        );
    }
    ctx
}

fn string_arg(args: &[CelValue], i: usize, function: &str) -> Result<String, ExecutionError> {
    match args.get(i) {
        Some(CelValue::String(s)) => Ok(s.to_string()),
        _ => Err(ExecutionError::function_error(
            function,
            format!("argument {} must be a string", i + 1),
        )),
    }
}

/// Whether `value` (a `YYYY-MM-DD` date or an RFC 3339 timestamp) falls on today's month
/// and day in `tz`. A 29 February is celebrated on 28 February in other years.
fn is_anniversary(value: &CelValue, now: DateTime<Utc>, tz: Tz) -> bool {
    let date = match value {
        CelValue::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&tz).date_naive())
        }),
        CelValue::Timestamp(t) => Some(t.with_timezone(&tz).date_naive()),
        _ => None,
    };
    let Some(date) = date else { return false };
    let today = now.with_timezone(&tz).date_naive();
    let leap_day_in_common_year = date.month() == 2
        && date.day() == 29
        && NaiveDate::from_ymd_opt(today.year(), 2, 29).is_none();
    if leap_day_in_common_year {
        return today.month() == 2 && today.day() == 28;
    }
    date.month() == today.month() && date.day() == today.day()
}

/// Reports the first call (in source order) to a history function with a wrong number
/// of arguments or a literal window that is not a duration: at run time either would
/// only make the condition false, for every customer. `byte_offset_of` gives where the
/// parser saw a node of `root` in `source`: the `(` of a call, the start of a literal.
fn check_history_calls(
    root: &IdedExpr,
    source: &str,
    byte_offset_of: &dyn Fn(u64) -> Option<usize>,
) -> Result<(), ExprError> {
    let mut problems = Vec::new();
    visit(root, &mut |node| {
        let Node::Call(call) = &node.expr else {
            return;
        };
        let Some(function) = HISTORY_FUNCTIONS.iter().find(|f| f.name == call.func_name) else {
            return;
        };
        if call.target.is_some() {
            return;
        }
        let (min, max) = (function.required, function.params.len());
        if !(min..=max).contains(&call.args.len()) {
            let takes = match (min, max) {
                (1, 1) => "1 argument".to_owned(),
                (min, max) if min == max => format!("{min} arguments"),
                (min, max) => format!("{min} or {max} arguments"),
            };
            let signature = function
                .params
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    if i < min {
                        (*p).to_owned()
                    } else {
                        format!("[{p}]")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            problems.push(ExprError {
                message: format!(
                    "`{name}` takes {takes}, `{name}({signature})`, not {given}, in `{source}`",
                    name = function.name,
                    given = call.args.len(),
                ),
                offset: byte_offset_of(node.id)
                    .map(|paren| call_name_start(source, paren, function.name).unwrap_or(paren))
                    .and_then(|at| char_offset(source, at)),
            });
            return;
        }
        // An event, property or segment name written as a number or boolean names
        // nothing: the call would be false (or zero) for every customer.
        for (param, arg) in function.params.iter().zip(&call.args) {
            let Node::Literal(literal) = &arg.expr else {
                continue;
            };
            if matches!(*param, "event" | "property" | "segment")
                && !matches!(literal, LiteralValue::String(_))
            {
                problems.push(ExprError {
                    message: format!(
                        "the {param} of `{}` is a name in quotes, such as \"order_completed\", not {}, in `{source}`",
                        function.name,
                        literal.to_val().get_type().name()
                    ),
                    offset: byte_offset_of(arg.id).and_then(|at| char_offset(source, at)),
                });
                return;
            }
        }
        let Some(window) = function.window.and_then(|i| call.args.get(i)) else {
            return;
        };
        let Node::Literal(literal) = &window.expr else {
            return;
        };
        let why = match literal {
            LiteralValue::String(text) => parse_duration(text.inner()).err(),
            other => Some(format!(
                "expected a duration in quotes, such as \"30d\", found {}",
                other.to_val().get_type().name()
            )),
        };
        if let Some(why) = why {
            problems.push(ExprError {
                message: format!("bad window for `{}` in `{source}`: {why}", function.name),
                offset: byte_offset_of(window.id).and_then(|at| char_offset(source, at)),
            });
        }
    });
    match problems
        .into_iter()
        .min_by_key(|p| p.offset.unwrap_or(usize::MAX))
    {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// Refuses a name that is none of [`VARIABLES`] nor bound by a macro (`x` in
/// `items.exists(x, x > 0)`): a typo such as `evnt.total` would otherwise read as a
/// missing value, and the condition would quietly never hold.
fn check_variables(root: &IdedExpr, source: &str) -> Result<(), ExprError> {
    let mut bound = Vec::new();
    visit(root, &mut |node| {
        if let Node::Comprehension(c) = &node.expr {
            bound.push(c.iter_var.as_str());
            bound.extend(c.iter_var2.as_deref());
            bound.push(c.accu_var.as_str());
        }
    });
    let references = root.references();
    let mut unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|name| !VARIABLES.contains(name) && !bound.contains(name))
        .collect();
    unknown.sort_by_key(|name| source.find(name));
    match unknown.first() {
        None => Ok(()),
        Some(name) => Err(ExprError {
            message: format!(
                "unknown name `{name}` in `{source}`: an expression reads `profile`, `event`, \
                 `trigger` and `now`"
            ),
            offset: source.find(name).and_then(|at| char_offset(source, at)),
        }),
    }
}

/// Where the name of the function called with the `(` at byte `paren` starts.
fn call_name_start(source: &str, paren: usize, name: &str) -> Option<usize> {
    let before = source.get(..paren)?.trim_end();
    before.ends_with(name).then(|| before.len() - name.len())
}

/// The character offset of byte `at` in `source`, as [`ExprError::offset`] counts.
fn char_offset(source: &str, at: usize) -> Option<usize> {
    source.get(..at).map(|before| before.chars().count())
}

/// Calls `f` on `node` and every node under it.
fn visit<'e>(node: &'e IdedExpr, f: &mut dyn FnMut(&'e IdedExpr)) {
    f(node);
    match &node.expr {
        Node::Call(call) => {
            if let Some(target) = &call.target {
                visit(target, f);
            }
            for arg in &call.args {
                visit(arg, f);
            }
        }
        Node::Select(select) => visit(&select.operand, f),
        Node::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(part, f);
            }
        }
        Node::List(list) => {
            for element in &list.elements {
                visit(element, f);
            }
        }
        Node::Map(map) => {
            for entry in &map.entries {
                visit_entry(&entry.expr, f);
            }
        }
        Node::Struct(structure) => {
            for entry in &structure.entries {
                visit_entry(&entry.expr, f);
            }
        }
        Node::Ident(_) | Node::Literal(_) | Node::Unspecified => {}
    }
}

fn visit_entry<'e>(entry: &'e EntryExpr, f: &mut dyn FnMut(&'e IdedExpr)) {
    match entry {
        EntryExpr::MapEntry(e) => {
            visit(&e.key, f);
            visit(&e.value, f);
        }
        EntryExpr::StructField(e) => visit(&e.value, f),
    }
}

/// How a rewritten node hands over its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Yields {
    Value,
    /// An optional, empty where a member or key is missing: a rewritten `a.b` or `a[k]`.
    /// Whatever reads it takes it with `.orValue(null)`, see [`settle`].
    MaybeMissing,
    /// An optional the expression asked for itself (`a.?b`, `a[?k]`): left as CEL has it.
    Optional,
}

/// Rewrites a parsed expression so that a missing member or key reads as `null` and
/// comparing `null` with anything but `null` is `false`, using CEL's own operations:
///
/// - `a.b` becomes `a.?b` and `a[k]` becomes `a[?k]`, CEL's optional selections, which
///   carry a missing member down a chain (`profile.address.city`) instead of failing;
///   whatever reads the chain takes its value with `.orValue(null)`;
/// - `<`, `<=`, `>`, `>=`, `!=` and `in` become the overloads of
///   [`NULL_SAFE_OPERATORS`]. `==` needs nothing: CEL's `null` equals only `null`.
///
/// Presence tests (`has(a.b)`) keep their meaning, and optionals written by hand are
/// left alone. Rewriting the tree rather than the values keeps evaluation in CEL's
/// interpreter, and costs nothing per customer.
fn null_safe(node: IdedExpr) -> IdedExpr {
    let (node, yields) = rewrite(node);
    settle(node, yields)
}

fn settle(node: IdedExpr, yields: Yields) -> IdedExpr {
    if yields != Yields::MaybeMissing {
        return node;
    }
    let id = node.id;
    call(
        id,
        "orValue",
        Some(node),
        vec![IdedExpr {
            id,
            expr: Node::Literal(LiteralValue::Null),
        }],
    )
}

fn call(id: u64, func_name: &str, target: Option<IdedExpr>, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id,
        expr: Node::Call(CallExpr {
            func_name: func_name.to_owned(),
            target: target.map(Box::new),
            args,
        }),
    }
}

fn rewrite(node: IdedExpr) -> (IdedExpr, Yields) {
    let id = node.id;
    let value = |expr| (IdedExpr { id, expr }, Yields::Value);
    match node.expr {
        Node::Select(SelectExpr {
            operand,
            field,
            test,
        }) => {
            let (operand, yields) = rewrite(*operand);
            if test || yields == Yields::Optional {
                let select = Node::Select(SelectExpr {
                    operand: Box::new(operand),
                    field,
                    test,
                });
                let yields = if test {
                    Yields::Value
                } else {
                    Yields::Optional
                };
                return (IdedExpr { id, expr: select }, yields);
            }
            let field = IdedExpr {
                id,
                expr: Node::Literal(LiteralValue::String(CelString::from(field))),
            };
            (
                call(id, operators::OPT_SELECT, None, vec![operand, field]),
                Yields::MaybeMissing,
            )
        }
        Node::Call(CallExpr {
            func_name,
            target,
            args,
        }) => rewrite_call(id, &func_name, target.map(|t| *t), args),
        Node::Comprehension(mut c) => {
            c.iter_range = null_safe(c.iter_range);
            c.accu_init = null_safe(c.accu_init);
            c.loop_cond = null_safe(c.loop_cond);
            c.loop_step = null_safe(c.loop_step);
            c.result = null_safe(c.result);
            value(Node::Comprehension(c))
        }
        Node::List(mut list) => {
            list.elements = list.elements.into_iter().map(null_safe).collect();
            value(Node::List(list))
        }
        Node::Map(mut map) => {
            for entry in &mut map.entries {
                null_safe_entry(&mut entry.expr);
            }
            value(Node::Map(map))
        }
        Node::Struct(mut structure) => {
            for entry in &mut structure.entries {
                null_safe_entry(&mut entry.expr);
            }
            value(Node::Struct(structure))
        }
        expr @ (Node::Ident(_) | Node::Literal(_) | Node::Unspecified) => value(expr),
    }
}

fn rewrite_call(
    id: u64,
    func_name: &str,
    target: Option<IdedExpr>,
    args: Vec<IdedExpr>,
) -> (IdedExpr, Yields) {
    let optional_access = [
        operators::INDEX,
        operators::OPT_INDEX,
        operators::OPT_SELECT,
    ];
    let args = match <[IdedExpr; 2]>::try_from(args) {
        Ok([operand, key]) if target.is_none() && optional_access.contains(&func_name) => {
            // CEL's optional accesses take an optional operand as its value, so a chain
            // stays optional until read.
            let (operand, yields) = rewrite(operand);
            let key = null_safe(key);
            let (func_name, yields) = match (func_name, yields) {
                (operators::INDEX, Yields::Optional) => (operators::INDEX, Yields::Optional),
                (operators::INDEX, _) => (operators::OPT_INDEX, Yields::MaybeMissing),
                (written, _) => (written, Yields::Optional),
            };
            return (call(id, func_name, None, vec![operand, key]), yields);
        }
        Ok(args) => Vec::from(args),
        Err(args) => args,
    };
    let args = args.into_iter().map(null_safe).collect();
    let null_safe_operator = NULL_SAFE_OPERATORS
        .iter()
        .find(|(operator, _, _)| *operator == func_name)
        .filter(|_| target.is_none())
        .map(|(_, name, _)| *name);
    let node = match null_safe_operator {
        Some(name) => call(id, name, None, args),
        None => call(id, func_name, target.map(null_safe), args),
    };
    (node, Yields::Value)
}

fn null_safe_entry(entry: &mut EntryExpr) {
    let take = |e: &mut IdedExpr| null_safe(std::mem::take(e));
    match entry {
        EntryExpr::MapEntry(e) => {
            e.key = take(&mut e.key);
            e.value = take(&mut e.value);
        }
        EntryExpr::StructField(e) => e.value = take(&mut e.value),
    }
}

fn null_safe_less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    null_safe_order(operators::LESS, &args, Ordering::is_lt)
}

fn null_safe_less_equals<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    null_safe_order(operators::LESS_EQUALS, &args, Ordering::is_le)
}

fn null_safe_greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    null_safe_order(operators::GREATER, &args, Ordering::is_gt)
}

fn null_safe_greater_equals<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    null_safe_order(operators::GREATER_EQUALS, &args, Ordering::is_ge)
}

/// `a != b`, but `false` when either is `null`: `x != null` is false for a missing
/// `x`, and so is `x != "gold"`, as the language promises.
fn null_safe_not_equals<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [lhs, rhs] = two(&args)?;
    Ok(boolean(!is_null(lhs) && !is_null(rhs) && lhs != rhs))
}

/// `a in b`, but `false` when the container `b` is `null`: a missing list or map
/// contains nothing.
fn null_safe_in<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [item, container] = two(&args)?;
    if is_null(container) {
        return Ok(boolean(false));
    }
    container
        .as_container()
        .ok_or_else(|| mismatch(operators::IN, item, container))?
        .contains(item.as_ref())
        .map(boolean)
}

/// Orders two values as CEL's own operator does, or `false` if either is `null`.
fn null_safe_order<'b, 'v>(
    operator: &str,
    args: &[CowVal<'b, 'v>],
    holds: fn(Ordering) -> bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [lhs, rhs] = two(args)?;
    if is_null(lhs) || is_null(rhs) {
        return Ok(boolean(false));
    }
    let order = lhs
        .as_comparer()
        .ok_or_else(|| mismatch(operator, lhs, rhs))?
        .compare(rhs.as_ref())
        .map_err(|_| mismatch(operator, lhs, rhs))?;
    Ok(boolean(holds(order)))
}

fn two<'a, 'b, 'v>(args: &'a [CowVal<'b, 'v>]) -> Result<[&'a CowVal<'b, 'v>; 2], ExecutionError> {
    match args {
        [lhs, rhs] => Ok([lhs, rhs]),
        _ => Err(ExecutionError::invalid_argument_count(2, args.len())),
    }
}

fn is_null(value: &CowVal<'_, '_>) -> bool {
    value.downcast_ref::<CelNull>().is_some()
}

fn boolean<'b, 'v>(b: bool) -> CowVal<'b, 'v> {
    CowVal::Borrowed(if b { &CelBool::TRUE } else { &CelBool::FALSE })
}

fn mismatch(operator: &str, lhs: &CowVal<'_, '_>, rhs: &CowVal<'_, '_>) -> ExecutionError {
    ExecutionError::no_such_overload(
        operator,
        vec![
            lhs.get_type().name().to_owned(),
            rhs.get_type().name().to_owned(),
        ],
    )
}

/// Whether CEL's standard environment defines `name` (declaring it again is refused).
fn is_cel_function(name: &str) -> bool {
    Context::with_env(ENV.clone())
        .add_function(name, || 0_i64)
        .is_err()
}

fn is_builtin_macro_or_operator(name: &str) -> bool {
    // Operators are named by their shape: `_&&_`, `!_`, `-_`, `_[_]`, `@in`.
    !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with('_')
        || matches!(
            name,
            "has" | "all" | "exists" | "exists_one" | "map" | "filter"
        )
}

/// The string literal first arguments of calls to `function` in `source`.
fn string_arguments_of(source: &str, function: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(function) {
        rest = &rest[at + function.len()..];
        let args = rest.trim_start();
        let Some(args) = args.strip_prefix('(') else {
            continue;
        };
        let args = args.trim_start();
        let Some(quote) = args.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            continue;
        };
        if let Some(end) = args[1..].find(quote) {
            found.push(args[1..1 + end].to_owned());
        }
    }
    found
}

/// Converts a JSON object into a CEL map, numbers becoming ints where they are integral.
pub fn json_map_to_cel(map: &Map<String, Value>) -> CelValue {
    let entries: HashMap<Key, CelValue> = map
        .iter()
        .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
        .collect();
    CelValue::Map(CelMap::from(entries))
}

fn json_to_cel(value: &Value) -> CelValue {
    match value {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => n
            .as_i64()
            .map(CelValue::Int)
            .or_else(|| n.as_u64().map(CelValue::UInt))
            .unwrap_or_else(|| CelValue::Float(n.as_f64().unwrap_or(f64::NAN))),
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(items) => CelValue::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => json_map_to_cel(map),
    }
}

fn cel_to_json(value: &CelValue) -> Option<Value> {
    Some(match value {
        CelValue::Null => Value::Null,
        CelValue::Bool(b) => Value::Bool(*b),
        CelValue::Int(i) => Value::from(*i),
        CelValue::UInt(u) => Value::from(*u),
        CelValue::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        CelValue::String(s) => Value::String(s.to_string()),
        CelValue::List(items) => {
            Value::Array(items.iter().map(cel_to_json).collect::<Option<_>>()?)
        }
        CelValue::Map(map) => Value::Object(
            map.map
                .iter()
                .map(|(k, v)| Some((key_to_string(k), cel_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
        CelValue::Timestamp(t) => Value::String(t.to_rfc3339()),
        CelValue::Duration(d) => Value::String(format!("{}s", d.num_seconds())),
        _ => return None,
    })
}

fn key_to_string(key: &Key) -> String {
    match key {
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
        Key::String(s) => s.to_string(),
    }
}

/// Shorthand for tests and callers that have no history.
pub fn no_history() -> Arc<dyn History> {
    Arc::new(NoHistory)
}

/// Compiled expressions are shared by every customer across the daemon's threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Expr>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn eval(source: &str, profile: Value, event: Value) -> Option<Value> {
        let (profile, event) = (map(profile), map(event));
        let scope = Scope {
            profile: &profile,
            event: &event,
            trigger: &event,
            now: DateTime::parse_from_rfc3339("2026-03-03T07:00:00Z")
                .unwrap()
                .to_utc(),
            timezone: Tz::Europe__Moscow,
            history: no_history(),
            segments: Arc::default(),
        };
        Expr::compile(source, Pos::default()).unwrap().eval(&scope)
    }

    #[test]
    fn refuses_syntax_errors_and_unknown_functions() {
        assert!(Expr::compile("event.total >", Pos::default()).is_err());
        let err = Expr::compile("didd(\"x\")", Pos::default()).unwrap_err();
        assert!(err.message.contains("didd"), "{}", err.message);
        assert!(
            Expr::compile(
                "size(profile.tags) > 0 && did(\"x\", \"30d\")",
                Pos::default()
            )
            .is_ok()
        );
        assert!(Expr::compile("profile.name.startsWith('A')", Pos::default()).is_ok());
        assert!(Expr::compile("!in_segment(\"vip\") && -profile.debt < 0", Pos::default()).is_ok());
    }

    #[test]
    fn refuses_names_that_are_not_variables_but_takes_macro_variables() {
        let err = Expr::compile("profile.vip && evnt.total > 0", Pos::default()).unwrap_err();
        assert!(
            err.message.contains("unknown name `evnt`"),
            "{}",
            err.message
        );
        assert_eq!(err.offset, Some(15));
        for source in [
            "event.items.exists(i, i.price > 100)",
            "event.items.all(i, i.qty > 0) && now > timestamp(\"2026-01-01T00:00:00Z\")",
            "event.items.map(i, i.price).size() > 1",
            "trigger.total > 0 || profile.points > 10",
        ] {
            let compiled = Expr::compile(source, Pos::default());
            assert!(
                compiled.is_ok(),
                "{source}: {:?}",
                compiled.err().map(|e| e.message)
            );
        }
    }

    #[test]
    fn missing_values_make_conditions_false_not_errors() {
        assert_eq!(
            eval("profile.age > 3", json!({}), json!({})),
            Some(json!(false))
        );
        assert_eq!(
            eval("event.total / 10", json!({}), json!({"total": 5000})),
            Some(json!(500))
        );
        assert_eq!(
            eval(
                "anniversary(profile.birthday)",
                json!({"birthday": "1990-03-03"}),
                json!({})
            ),
            Some(json!(true))
        );
    }

    fn holds(source: &str, profile: Value, event: Value) -> bool {
        eval(source, profile, event) == Some(json!(true))
    }

    #[test]
    fn a_missing_trait_is_null_and_comparing_it_is_false() {
        let none = || json!({});
        assert_eq!(eval("profile.age", none(), none()), Some(Value::Null));
        assert!(!holds("profile.age > 3", none(), none()));
        assert!(holds("!(profile.age > 3)", none(), none()));
        assert!(holds("!(profile.age <= 3)", none(), none()));
        assert!(holds("!(3 < profile.age)", none(), none()));
        assert!(holds("profile.coupon == null", none(), none()));
        assert!(!holds("profile.coupon != null", none(), none()));
        assert!(!holds("event.coupon == \"SPRING\"", none(), none()));
        assert!(!holds("event.coupon != \"SPRING\"", none(), none()));
        assert!(holds("!(event.coupon == \"SPRING\")", none(), none()));
        assert!(holds(
            "profile.age > 3 || profile.vip == null",
            none(),
            none()
        ));
        assert!(!holds(
            "profile.vip == null && profile.age > 3",
            none(),
            none()
        ));
        assert!(holds("profile.age > 3 ? false : true", none(), none()));
        assert!(!holds("\"vip\" in profile.tags", none(), none()));
        assert!(holds("!(\"vip\" in profile.tags)", none(), none()));
        assert!(!holds("profile.tier in [\"gold\"]", none(), none()));
    }

    #[test]
    fn a_missing_member_of_a_missing_member_is_null() {
        let none = || json!({});
        assert_eq!(
            eval("profile.address.city", none(), none()),
            Some(Value::Null)
        );
        assert!(holds("profile.address.city == null", none(), none()));
        assert!(holds("!(profile.address.city == \"Oslo\")", none(), none()));
        assert!(holds(
            "profile[\"address\"][\"city\"] == null",
            none(),
            none()
        ));
        assert!(holds(
            "profile.tags[3] == null",
            json!({"tags": []}),
            none()
        ));
        let null_address = json!({"address": null});
        assert!(holds("profile.address.city == null", null_address, none()));
        assert!(!holds("has(profile.address.city)", none(), none()));
        assert!(holds(
            "has(profile.address.city)",
            json!({"address": {"city": "Oslo"}}),
            none()
        ));
        assert!(holds(
            "profile.orders.exists(o, o.total > 10) && !profile.orders.all(o, o.total > 10)",
            json!({"orders": [{"total": 20}, {}]}),
            none()
        ));
    }

    #[test]
    fn present_values_compare_as_cel_does() {
        let profile = || json!({"age": 30, "plan": "pro", "address": {"city": "Oslo"}});
        let none = || json!({});
        assert!(holds(
            "profile.age > 3 && profile.age >= 30.0",
            profile(),
            none()
        ));
        assert!(holds(
            "profile.age < 31 && profile.age <= 30u",
            profile(),
            none()
        ));
        assert!(holds("profile.plan != \"basic\"", profile(), none()));
        assert!(holds("profile.address.city == \"Oslo\"", profile(), none()));
        assert!(holds("\"city\" in profile.address", profile(), none()));
        // A type mismatch is still an error, so the condition is false either way.
        assert_eq!(eval("profile.plan > 3", profile(), none()), None);
        assert_eq!(eval("!(profile.plan > 3)", profile(), none()), None);
        // Optionals written by hand keep their meaning.
        assert_eq!(
            eval("profile.?nickname.orValue(\"friend\")", profile(), none()),
            Some(json!("friend"))
        );
        assert_eq!(
            eval("profile.?address.city.orValue(\"?\")", profile(), none()),
            Some(json!("Oslo"))
        );
    }

    #[test]
    fn arithmetic_with_a_missing_value_is_absent_not_a_panic() {
        let none = || json!({});
        assert_eq!(eval("profile.points + 10", none(), none()), None);
        assert_eq!(eval("-profile.points", none(), none()), None);
        assert_eq!(
            eval("profile.points / 0", json!({"points": 1}), none()),
            None
        );
        assert_eq!(
            eval("profile.points + 10", json!({"points": 5}), none()),
            Some(json!(15))
        );
    }

    #[test]
    fn refuses_history_calls_with_a_wrong_number_of_arguments() {
        for (source, function, at) in [
            ("count()", "count", 0),
            ("sum(\"order\") > 1", "sum", 0),
            ("did(\"x\") && did(\"x\", \"1d\", \"2d\")", "did", 12),
            ("\"é\" == \"\" || count (\"a\", \"1d\", 3) > 1", "count", 13),
            ("in_segment()", "in_segment", 0),
            ("anniversary(profile.a, profile.b)", "anniversary", 0),
        ] {
            let err = Expr::compile(source, Pos::default()).unwrap_err();
            assert!(
                err.message.contains(&format!("`{function}` takes")),
                "{}",
                err.message
            );
            assert_eq!(err.offset, Some(at), "{source}: {}", err.message);
        }
        let err = Expr::compile("sum(\"order\") > 1 && count()", Pos::default()).unwrap_err();
        assert_eq!(
            err.message,
            "`sum` takes 2 or 3 arguments, `sum(event, property, [window])`, not 1, in `sum(\"order\") > 1 && count()`"
        );
    }

    #[test]
    fn refuses_literal_windows_that_are_not_durations() {
        for (source, at) in [
            ("did(\"x\", \"30 days\")", 9),
            ("count(\"x\", '1y') > 2", 11),
            ("sum(\"order\", \"total\", \"d\") > 1", 22),
            ("did(\"x\", 30)", 9),
            ("\"é\" == \"\" || did(\"x\", \"30 days\")", 22),
        ] {
            let err = Expr::compile(source, Pos::default()).unwrap_err();
            assert!(err.message.contains("bad window"), "{}", err.message);
            assert_eq!(err.offset, Some(at), "{source}: {}", err.message);
        }
        for good in [
            "did(\"x\", \"30d\")",
            "count(\"x\", \"1d12h\") > 1",
            "sum(\"order\", \"total\") > 1",
            "did(\"x\", profile.window)",
        ] {
            assert!(Expr::compile(good, Pos::default()).is_ok(), "{good}");
        }
    }

    #[test]
    fn check_points_at_bad_history_calls() {
        let dir = tempfile::tempdir().unwrap();
        let journey = "id: bad_history\ntrigger:\n  event: signed_up\n  where: 'sum(\"order\") > 1 && did(\"x\", \"30 days\") && count()'\nsteps:\n  first:\n    wait: 1h\n";
        std::fs::write(dir.path().join("bad_history.yaml"), journey).unwrap();
        let errors = crate::load(dir.path()).unwrap_err();
        let first = errors[0].render();
        let first = first.lines().next().unwrap();
        assert!(
            first.ends_with(
                "bad_history.yaml:4:11: error: `sum` takes 2 or 3 arguments, `sum(event, property, [window])`, not 1, in `sum(\"order\") > 1 && did(\"x\", \"30 days\") && count()`"
            ),
            "{first}"
        );
    }

    #[test]
    fn finds_segment_references() {
        let e = Expr::compile(
            "in_segment(\"vip\") || in_segment('big_cart')",
            Pos::default(),
        )
        .unwrap();
        assert_eq!(e.segment_references(), vec!["vip", "big_cart"]);
    }

    /// Counts one event for a window that covers all history, none for any other.
    struct AllOrNothing;

    impl History for AllOrNothing {
        fn count(&self, _: &str, since: Option<DateTime<Utc>>) -> u64 {
            u64::from(since.is_none())
        }
        fn sum(&self, _: &str, _: &str, _: Option<DateTime<Utc>>) -> f64 {
            0.0
        }
    }

    #[test]
    fn windows_past_the_ends_of_time_do_not_panic() {
        let nothing = Map::new();
        let eval_at = |source: &str, now: DateTime<Utc>| {
            let scope = Scope {
                profile: &nothing,
                event: &nothing,
                trigger: &nothing,
                now,
                timezone: Tz::UTC,
                history: Arc::new(AllOrNothing),
                segments: Arc::default(),
            };
            Expr::compile(source, Pos::default()).unwrap().eval(&scope)
        };
        let first_day = DateTime::<Utc>::MIN_UTC + TimeDelta::days(1);
        let last_day = DateTime::<Utc>::MAX_UTC - TimeDelta::days(1);
        // A window reaching before the first representable instant covers all history.
        assert_eq!(
            eval_at("did(\"x\", \"30d\")", first_day),
            Some(Value::Bool(true))
        );
        assert_eq!(
            eval_at("count(\"x\", duration(\"240h\"))", first_day),
            Some(json!(1))
        );
        assert_eq!(
            eval_at("did(\"x\", \"30d\")", last_day),
            Some(Value::Bool(false))
        );
        // A negative window reaching past the last one covers nothing.
        assert_eq!(
            eval_at("did(\"x\", duration(\"-240h\"))", last_day),
            Some(Value::Bool(false))
        );
        // CEL checks its own arithmetic on `now` against its range, years 1 to 9999 (a
        // clock's `now` is always inside it): an error, not a panic.
        let cel_last_day = DateTime::parse_from_rfc3339("9999-12-31T00:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            eval_at("now + duration(\"240h\") > now", cel_last_day),
            None
        );
    }
}
