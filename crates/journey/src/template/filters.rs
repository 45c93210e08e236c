//! Filters of our own: `date`, deterministic and ISO-aware, and `json`.

use std::fmt;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Utc};
use chrono_tz::Tz;
use liquid_core::parser::{FilterArguments, ParameterReflection};
use liquid_core::{
    Error, Expression, Filter, FilterReflection, ParseFilter, Result, Runtime, Value, ValueView,
};
use serde_json::Value as JsonValue;

/// The render's clock, kept in the runtime's registers for `date` to read: the instant
/// the message is rendered and the customer's time zone.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Clock(pub(super) Option<(DateTime<Utc>, Tz)>);

/// `date: FORMAT`, replacing Liquid's own, which reads `now` from the wall clock and
/// parses neither RFC 3339 timestamps nor plain dates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Date;

impl FilterReflection for Date {
    fn name(&self) -> &str {
        "date"
    }
    fn description(&self) -> &str {
        "Formats a timestamp, a date or `now` with strftime, in the customer's time zone."
    }
    fn positional_parameters(&self) -> &'static [ParameterReflection] {
        &[ParameterReflection {
            name: "format",
            description: "The strftime format to show the date in.",
            is_optional: false,
        }]
    }
    fn keyword_parameters(&self) -> &'static [ParameterReflection] {
        &[]
    }
}

impl ParseFilter for Date {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>> {
        let [format] = arguments_exactly::<1>(arguments, "date")?;
        // A written format is checked once, at load, so `waymark check` reports it.
        let parsed = match &format {
            Expression::Literal(value) => Some(strftime(&value.to_kstr())?),
            Expression::Variable(_) => None,
        };
        Ok(Box::new(DateFilter { format, parsed }))
    }
    fn reflection(&self) -> &dyn FilterReflection {
        self
    }
}

#[derive(Debug)]
struct DateFilter {
    format: Expression,
    parsed: Option<Vec<Item<'static>>>,
}

impl fmt::Display for DateFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "date: {}", self.format)
    }
}

impl Filter for DateFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
        let evaluated;
        let items = match &self.parsed {
            Some(items) => items,
            None => {
                evaluated = strftime(&self.format.evaluate(runtime)?.to_kstr())?;
                &evaluated
            }
        };
        let Clock(clock) = *runtime.registers().get_mut::<Clock>();
        let Some((now, tz)) = clock else {
            return Err(Error::with_msg("`date` needs the render's clock"));
        };
        // Liquid's own `date` leaves what it cannot read, and an empty format, as it is.
        let Some(moment) = moment(input, now, tz).filter(|_| !items.is_empty()) else {
            return Ok(input.to_value());
        };
        let mut text = String::new();
        fmt::write(
            &mut text,
            format_args!("{}", moment.format_with_items(items.iter())),
        )
        .map_err(|_| Error::with_msg("invalid date format"))?;
        Ok(Value::scalar(text))
    }
}

fn strftime(format: &str) -> Result<Vec<Item<'static>>> {
    StrftimeItems::new(format)
        .parse_to_owned()
        .map_err(|_| Error::with_msg(format!("invalid date format `{format}`")))
}

/// The moment `input` names, in `tz`: `now` and `today` are the render's instant; an
/// instant (a timestamp with an offset, a whole number of Unix seconds) is shown in `tz`;
/// a date or a local date and time without an offset is taken as written, in `tz`.
fn moment(input: &dyn ValueView, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Tz>> {
    let scalar = input.as_scalar()?;
    match serde_json::to_value(&scalar).ok()? {
        JsonValue::Number(n) => {
            DateTime::from_timestamp(n.as_i64()?, 0).map(|t| t.with_timezone(&tz))
        }
        JsonValue::String(text) => {
            let text = text.trim();
            if text.eq_ignore_ascii_case("now") || text.eq_ignore_ascii_case("today") {
                Some(now.with_timezone(&tz))
            } else {
                parse_moment(text, tz).or_else(|| {
                    // The forms Liquid itself reads ("13 Jun 2016 02:30:00 +0300").
                    let t = scalar.to_date_time()?;
                    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond())
                        .map(|t| t.with_timezone(&tz))
                })
            }
        }
        _ => None,
    }
}

fn parse_moment(text: &str, tz: Tz) -> Option<DateTime<Tz>> {
    const WITH_OFFSET: [&str; 3] = [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f %#z",
        "%Y-%m-%dT%H:%M%#z",
    ];
    const LOCAL: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    let instant = DateTime::parse_from_rfc3339(text).ok().or_else(|| {
        WITH_OFFSET
            .iter()
            .find_map(|f| DateTime::<FixedOffset>::parse_from_str(text, f).ok())
    });
    if let Some(instant) = instant {
        return Some(instant.with_timezone(&tz));
    }
    let local = LOCAL
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        })?;
    crate::model::first_instant_at_or_after(&tz, local)
}

/// `json`: the value as JSON text; a string quoted and escaped, nil `null`, an object
/// with its keys sorted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Json;

impl FilterReflection for Json {
    fn name(&self) -> &str {
        "json"
    }
    fn description(&self) -> &str {
        "Renders a value as JSON: a string quoted and escaped, objects and arrays as JSON."
    }
    fn positional_parameters(&self) -> &'static [ParameterReflection] {
        &[]
    }
    fn keyword_parameters(&self) -> &'static [ParameterReflection] {
        &[]
    }
}

impl ParseFilter for Json {
    fn parse(&self, arguments: FilterArguments<'_>) -> Result<Box<dyn Filter>> {
        let [] = arguments_exactly::<0>(arguments, "json")?;
        Ok(Box::new(JsonFilter))
    }
    fn reflection(&self) -> &dyn FilterReflection {
        self
    }
}

#[derive(Debug)]
struct JsonFilter;

impl fmt::Display for JsonFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("json")
    }
}

impl Filter for JsonFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<Value> {
        Ok(Value::scalar(to_json(input).to_string()))
    }
}

fn to_json(value: &dyn ValueView) -> JsonValue {
    if let Some(scalar) = value.as_scalar() {
        // Numbers, booleans and strings as themselves; a date as its text; NaN as null.
        serde_json::to_value(&scalar).unwrap_or(JsonValue::Null)
    } else if let Some(array) = value.as_array() {
        JsonValue::Array(array.values().map(to_json).collect())
    } else if let Some(object) = value.as_object() {
        // Liquid keeps objects in hash maps, in no fixed order: sorted keys keep a body
        // the same from one render to the next.
        let mut fields: Vec<_> = object.iter().collect();
        fields.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        JsonValue::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect(),
        )
    } else {
        JsonValue::Null
    }
}

/// The filter's positional arguments, exactly `N` of them and no keyword ones.
fn arguments_exactly<const N: usize>(
    mut arguments: FilterArguments<'_>,
    filter: &str,
) -> Result<[Expression; N]> {
    let given: Vec<Expression> = arguments.positional.by_ref().collect();
    let keyword = arguments.keyword.next().map(|(name, _)| name.to_owned());
    let count = given.len();
    match (<[Expression; N]>::try_from(given), keyword) {
        (Ok(given), None) => Ok(given),
        (_, Some(name)) => Err(Error::with_msg(format!(
            "`{filter}` takes no argument `{name}`"
        ))),
        (Err(_), None) => Err(Error::with_msg(format!(
            "`{filter}` takes {N} argument{}, not {count}",
            if N == 1 { "" } else { "s" }
        ))),
    }
}
