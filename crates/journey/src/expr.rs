//! CEL expressions: compiled once at load, evaluated per customer.
//!
//! Evaluation never fails: a missing trait or property, a type mismatch or any other
//! runtime error makes a condition false and a computed value absent, as the language
//! promises marketers ("a missing trait is null and any comparison with it is false").

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map as CelMap};
use cel::{Context, Env, ExecutionError, Program, Value as CelValue};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::duration::parse_duration;
use crate::model::{Pos, Segments};

/// The variables an expression may name.
pub const VARIABLES: [&str; 4] = ["profile", "event", "trigger", "now"];

/// The functions over the customer's history that expressions may call, with their arity.
pub const HISTORY_FUNCTIONS: [(&str, std::ops::RangeInclusive<usize>); 5] = [
    ("did", 1..=2),
    ("count", 1..=2),
    ("sum", 2..=3),
    ("in_segment", 1..=1),
    ("anniversary", 1..=1),
];

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled CEL expression and where it was written.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
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
    /// Parses `source` and checks that every function it calls exists.
    ///
    /// # Errors
    /// A syntax error, or a call to a function that is neither CEL's nor one of
    /// [`HISTORY_FUNCTIONS`].
    pub fn compile(source: &str, pos: Pos) -> Result<Expr, ExprError> {
        let program = ENV.compile(source).map_err(|errors| {
            let first = errors.errors.first();
            ExprError {
                message: first.map_or_else(
                    || "invalid expression".to_owned(),
                    |e| format!("invalid expression `{source}`: {}", e.msg),
                ),
                offset: first.and_then(|e| usize::try_from(e.pos.1).ok()),
            }
        })?;
        for name in program.references().functions() {
            let known = is_cel_function(name)
                || HISTORY_FUNCTIONS.iter().any(|(f, _)| *f == name)
                || is_builtin_macro_or_operator(name);
            if !known {
                return Err(ExprError {
                    message: format!("unknown function `{name}` in `{source}`"),
                    offset: source.find(name),
                });
            }
        }
        let references = program.references();
        let uses = Uses {
            profile: references.has_variable("profile"),
            event: references.has_variable("event"),
            trigger: references.has_variable("trigger"),
            history: HISTORY_FUNCTIONS
                .iter()
                .any(|(f, _)| references.has_function(f)),
        };
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
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
        self.program.execute(&ctx)
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
                .map(|d| Some(now - d))
                .map_err(|e| ExecutionError::function_error("window", e)),
            Some(CelValue::Duration(d)) => Ok(Some(now - *d)),
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
                    segment.condition.program.execute(&ctx),
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
    fn missing_values_make_conditions_false_not_errors() {
        assert_eq!(eval("profile.age > 3", json!({}), json!({})), None);
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

    #[test]
    fn finds_segment_references() {
        let e = Expr::compile(
            "in_segment(\"vip\") || in_segment('big_cart')",
            Pos::default(),
        )
        .unwrap();
        assert_eq!(e.segment_references(), vec!["vip", "big_cart"]);
    }
}
