//! Message templates: one Liquid part per channel, parsed once at load.
//!
//! Liquid with three changes, each for the language's sake. Data reads as the language
//! reads it ("a missing trait or property is null"): a missing key at any depth, in the
//! context, a loop variable or an assigned name, is nil, and so are its members, so
//! `default` works anywhere (`scope`, `blocks`). `date` is our own: deterministic
//! (`now` is the render's instant, from the engine's clock) and it reads ISO 8601 dates.
//! And `json` renders a value as JSON, for webhook bodies (`filters`).

mod blocks;
mod filters;
mod scope;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use liquid_core::{Language, ParseBlock, ParseFilter, ParseTag, Renderable};
use liquid_lib::stdlib;
use serde_json::{Map, Value};

static LANGUAGE: LazyLock<Language> = LazyLock::new(language);

/// Liquid's standard tags, blocks and filters (as `liquid::ParserBuilder::with_stdlib`
/// registers them), with our loops and `date`, and `json`.
fn language() -> Language {
    let tags: Vec<Box<dyn ParseTag>> = vec![
        Box::new(stdlib::AssignTag),
        Box::new(stdlib::BreakTag),
        Box::new(stdlib::ContinueTag),
        Box::new(stdlib::CycleTag),
        Box::new(stdlib::IncludeTag),
        Box::new(stdlib::IncrementTag),
        Box::new(stdlib::DecrementTag),
        Box::new(stdlib::RenderTag),
    ];
    let blocks: Vec<Box<dyn ParseBlock>> = vec![
        Box::new(stdlib::RawBlock),
        Box::new(stdlib::IfBlock),
        Box::new(stdlib::UnlessBlock),
        Box::new(stdlib::IfChangedBlock),
        Box::new(blocks::ForBlock),
        Box::new(blocks::TableRowBlock),
        Box::new(stdlib::CommentBlock),
        Box::new(stdlib::CaptureBlock),
        Box::new(stdlib::CaseBlock),
    ];
    let filters: Vec<Box<dyn ParseFilter>> = vec![
        Box::new(stdlib::Abs),
        Box::new(stdlib::Append),
        Box::new(stdlib::AtLeast),
        Box::new(stdlib::AtMost),
        Box::new(stdlib::Capitalize),
        Box::new(stdlib::Ceil),
        Box::new(stdlib::Compact),
        Box::new(stdlib::Concat),
        Box::new(filters::Date),
        Box::new(stdlib::Default),
        Box::new(stdlib::DividedBy),
        Box::new(stdlib::Downcase),
        Box::new(stdlib::Escape),
        Box::new(stdlib::EscapeOnce),
        Box::new(stdlib::First),
        Box::new(stdlib::Floor),
        Box::new(stdlib::Join),
        Box::new(filters::Json),
        Box::new(stdlib::Last),
        Box::new(stdlib::Lstrip),
        Box::new(stdlib::Map),
        Box::new(stdlib::Minus),
        Box::new(stdlib::Modulo),
        Box::new(stdlib::NewlineToBr),
        Box::new(stdlib::Plus),
        Box::new(stdlib::Prepend),
        Box::new(stdlib::Remove),
        Box::new(stdlib::RemoveFirst),
        Box::new(stdlib::Replace),
        Box::new(stdlib::ReplaceFirst),
        Box::new(stdlib::Reverse),
        Box::new(stdlib::Round),
        Box::new(stdlib::Rstrip),
        Box::new(stdlib::Size),
        Box::new(stdlib::Slice),
        Box::new(stdlib::Sort),
        Box::new(stdlib::SortNatural),
        Box::new(stdlib::Split),
        Box::new(stdlib::Strip),
        Box::new(stdlib::StripHtml),
        Box::new(stdlib::StripNewlines),
        Box::new(stdlib::Times),
        Box::new(stdlib::Truncate),
        Box::new(stdlib::TruncateWords),
        Box::new(stdlib::Uniq),
        Box::new(stdlib::Upcase),
        Box::new(stdlib::UrlDecode),
        Box::new(stdlib::UrlEncode),
        Box::new(stdlib::Where),
    ];
    let mut language = Language::empty();
    for tag in tags {
        language
            .tags
            .register(tag.reflection().tag().to_owned(), tag);
    }
    for block in blocks {
        let name = block.reflection().start_tag().to_owned();
        language.blocks.register(name, block);
    }
    for filter in filters {
        let name = filter.reflection().name().to_owned();
        language.filters.register(name, filter);
    }
    language
}

/// Parses Liquid source with the standard filters and ours.
///
/// # Errors
/// Liquid's own message for a template that does not parse (or a `date` format written
/// into it that strftime does not know).
pub fn parse_liquid(source: &str) -> Result<Liquid, String> {
    liquid_core::parser::parse(source, &LANGUAGE)
        .map(|elements| Liquid {
            source: source.into(),
            template: Arc::new(liquid_core::Template::new(elements)),
        })
        .map_err(|e| e.to_string())
}

/// One parsed Liquid text.
#[derive(Clone)]
pub struct Liquid {
    pub source: Arc<str>,
    template: Arc<liquid_core::Template>,
}

impl std::fmt::Debug for Liquid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Liquid").field(&self.source).finish()
    }
}

/// A template file: `templates/NAME.yaml`.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// Channel name -> field (`subject`, `html`, `text`, `body`) -> text.
    pub parts: BTreeMap<String, BTreeMap<String, Liquid>>,
}

/// What a template is rendered over.
pub struct RenderContext<'a> {
    pub profile: &'a Map<String, Value>,
    pub profile_id: &'a str,
    pub event: &'a Map<String, Value>,
    pub trigger: &'a Map<String, Value>,
    pub journey_id: &'a str,
    /// The instant of the render, from the engine's clock: what `'now' | date` shows.
    pub now: DateTime<Utc>,
    /// The customer's time zone (`profile.timezone`, else the policy's): `date` shows
    /// instants in it.
    pub timezone: Tz,
}

impl Template {
    pub fn has_part(&self, channel: &str) -> bool {
        self.parts.contains_key(channel)
    }

    /// Renders the part for `channel`: field name -> rendered text.
    ///
    /// # Errors
    /// The template has no part for `channel`, or Liquid failed to render a field.
    pub fn render(
        &self,
        channel: &str,
        ctx: &RenderContext<'_>,
    ) -> Result<BTreeMap<String, String>, String> {
        let part = self.parts.get(channel).ok_or_else(|| {
            format!(
                "template `{}` has no part for channel `{channel}`",
                self.name
            )
        })?;
        part.iter()
            .map(|(field, liquid)| {
                // Each field starts afresh: what one `assign`s, another does not see.
                liquid
                    .template
                    .render(&scope::Root::new(ctx))
                    .map(|text| (field.clone(), text))
                    .map_err(|e| format!("template `{}`, {channel}.{field}: {e}", self.name))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders `source` for Ann at 2026-03-02 10:00 UTC, her time zone UTC.
    fn render(source: &str, trigger: &Value) -> String {
        render_in(source, trigger, Tz::UTC)
    }

    fn render_in(source: &str, trigger: &Value, timezone: Tz) -> String {
        let template = Template {
            name: "t".to_owned(),
            parts: BTreeMap::from([(
                "sms".to_owned(),
                BTreeMap::from([("text".to_owned(), parse_liquid(source).unwrap())]),
            )]),
        };
        let profile = serde_json::json!({"first_name": "Ann"});
        let ctx = RenderContext {
            profile: profile.as_object().unwrap(),
            profile_id: "ann",
            event: &Map::new(),
            trigger: trigger.as_object().unwrap(),
            journey_id: "cart",
            now: "2026-03-02T10:00:00Z".parse().unwrap(),
            timezone,
        };
        template
            .render("sms", &ctx)
            .unwrap()
            .remove("text")
            .unwrap()
    }

    /// Fields, nested objects read whole and field by field, arrays of objects, and
    /// missing keys read as nil.
    #[test]
    fn renders_fields_nested_objects_and_missing_keys() {
        let trigger = serde_json::json!({
            "address": {"city": "Kazan", "zip": "420000"},
            "items": [{"sku": "a1"}, {"sku": "b2"}],
        });
        assert_eq!(
            render(
                "{{ profile.first_name }} ({{ profile.id }}, {{ journey.id }}): \
                 {{ trigger.address.city }}, {{ trigger.address | size }} fields; \
                 {% for item in trigger.items %}{{ item.sku }} {% endfor %}\
                 {{ profile.nickname | default: 'friend' }} {{ trigger.address.street | default: '-' }}",
                &trigger
            ),
            "Ann (ann, cart): Kazan, 2 fields; a1 b2 friend -"
        );
    }

    /// A missing field below the top level reads as nil too, and so do its members:
    /// `default` works at any depth.
    #[test]
    fn missing_nested_fields_read_as_nil() {
        let trigger = serde_json::json!({"address": {"zip": "420000"}, "note": "x"});
        assert_eq!(
            render(
                "{{ trigger.address.city | default: 'a' }} {{ trigger.shipping.address.city | default: 'b' }} \
                 {{ trigger.note.text | default: 'c' }} {{ trigger.items[3].sku | default: 'd' }} \
                 {% if trigger.shipping.fast %}fast{% else %}slow{% endif %}",
                &trigger
            ),
            "a b c d slow"
        );
    }

    /// Loop variables, values assigned to a name, and loops nested in loops are as lenient
    /// as the context itself.
    #[test]
    fn loops_over_objects_lacking_keys() {
        let trigger = serde_json::json!({
            "items": [{"sku": "a1", "price": 5}, {"sku": "b2"}],
            "orders": [{"lines": [{"sku": "c3"}]}, {}],
        });
        assert_eq!(
            render(
                "{% for i in trigger.items %}{{ i.sku }}={{ i.price | default: 0 }}\
                 {{ i.box.size | default: '?' }};{% endfor %} \
                 {% for o in trigger.orders %}[{% for l in o.lines %}{{ l.sku }}:{{ l.qty | default: 1 }}{% endfor %}]{% endfor %} \
                 {% assign first = trigger.items.first %}{{ first.sku }} {{ first.color | default: 'plain' }} \
                 {% for pair in trigger.nothing %}x{% else %}none{% endfor %}",
                &trigger
            ),
            "a1=5?;b2=0?; [c3:1][] a1 plain none"
        );
    }

    /// Timestamps (RFC 3339 and ISO 8601) and plain dates are formatted with strftime;
    /// `now` is the render's instant, not the wall clock.
    #[test]
    fn date_reads_iso_timestamps_plain_dates_and_the_render_clock() {
        let trigger = serde_json::json!({
            "when": "2026-05-01T10:00:00Z",
            "offset": "2026-05-01T23:30:00+03:00",
            "day": "2026-05-01",
            "local": "2026-05-01T08:15:00",
            "unix": 1_777_629_600,
            "junk": "soon",
        });
        assert_eq!(
            render(
                "{{ trigger.when | date: '%d.%m.%Y %H:%M' }} | {{ trigger.offset | date: '%Y-%m-%d %H:%M' }} | \
                 {{ trigger.day | date: '%d.%m.%Y' }} | {{ trigger.local | date: '%H:%M' }} | \
                 {{ trigger.unix | date: '%Y-%m-%d' }} | {{ trigger.junk | date: '%Y' }} | \
                 {{ trigger.missing | date: '%Y' | default: 'later' }} | \
                 {{ 'now' | date: '%Y-%m-%d %H:%M' }} | {{ 'today' | date: '%d.%m.%Y' }}",
                &trigger
            ),
            "01.05.2026 10:00 | 2026-05-01 20:30 | 01.05.2026 | 08:15 | 2026-05-01 | soon | later | \
             2026-03-02 10:00 | 02.03.2026"
        );
    }

    /// `json` renders a value as JSON: strings quoted and escaped, so a webhook body
    /// stays valid whatever the customer's name holds.
    #[test]
    fn json_quotes_and_escapes() {
        let trigger = serde_json::json!({
            "name": "Ann \"Bee\"\nSmith\\",
            "address": {"city": "Kazan", "zip": 420_000},
            "tags": ["a", 1, true, null],
        });
        let body = render(
            "{\"name\": {{ trigger.name | json }}, \"address\": {{ trigger.address | json }}, \
             \"tags\": {{ trigger.tags | json }}, \"none\": {{ trigger.missing | json }}}",
            &trigger,
        );
        assert_eq!(
            body,
            r#"{"name": "Ann \"Bee\"\nSmith\\", "address": {"city":"Kazan","zip":420000}, "tags": ["a",1,true,null], "none": null}"#
        );
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["name"], "Ann \"Bee\"\nSmith\\");
    }

    /// The other ISO 8601 forms that name an instant, and Liquid's own date texts.
    #[test]
    fn date_reads_other_timestamp_forms() {
        for (when, shown) in [
            ("2026-05-01 10:00:00Z", "2026-05-01 10:00"),
            ("2026-05-01T10:00:00.250+03:00", "2026-05-01 07:00"),
            ("2026-05-01t10:00:00z", "2026-05-01 10:00"),
            ("2026-05-01T10:00+03:00", "2026-05-01 07:00"),
            ("2026-05-01T10:00:00+0300", "2026-05-01 07:00"),
            ("2026-05-01 10:00:00 +0300", "2026-05-01 07:00"),
            ("13 Jun 2016 02:30:00 +0300", "2016-06-12 23:30"),
            ("2026-05-01 10:00", "2026-05-01 10:00"),
            (" 2026-05-01 ", "2026-05-01 00:00"),
            ("Today", "2026-03-02 10:00"),
            ("2026-13-01", "2026-13-01"),
        ] {
            let trigger = serde_json::json!({ "when": when });
            let text = render("{{ trigger.when | date: '%Y-%m-%d %H:%M' }}", &trigger);
            assert_eq!(text, shown, "{when}");
        }
    }

    /// An instant is shown in the customer's time zone, `now` too; a date or a local time
    /// written without an offset is shown as written.
    #[test]
    fn date_shows_instants_in_the_customers_time_zone() {
        let trigger = serde_json::json!({
            "when": "2026-05-01T20:00:00Z",
            "day": "2026-05-01",
            "local": "2026-05-01T08:15",
        });
        assert_eq!(
            render_in(
                "{{ trigger.when | date: '%d.%m.%Y %H:%M %Z' }} | {{ trigger.day | date: '%d.%m.%Y %z' }} | \
                 {{ trigger.local | date: '%H:%M' }} | {{ 'now' | date: '%H:%M' }}",
                &trigger,
                Tz::Asia__Tokyo,
            ),
            "02.05.2026 05:00 JST | 01.05.2026 +0900 | 08:15 | 19:00"
        );
    }

    /// A format strftime does not know is an error where it is written, at load.
    #[test]
    fn a_written_date_format_is_checked_at_parse() {
        let error = parse_liquid("{{ trigger.when | date: '%Q' }}").unwrap_err();
        assert!(error.contains("invalid date format `%Q`"), "{error}");
        assert!(parse_liquid("{{ trigger.when | date }}").is_err());
        assert!(parse_liquid("{{ trigger.when | json: 1 }}").is_err());
    }

    /// The loops keep Liquid's features: `forloop` (with `parentloop`), `limit`, `offset`,
    /// `reversed`, `else`, `break`, `continue`, ranges, objects in key order, `tablerow`;
    /// and `assign`, `capture` and `increment` still work beside the context.
    #[test]
    fn loops_and_assignments_keep_liquids_features() {
        let trigger = serde_json::json!({
            "items": ["a", "b", "c", "d"],
            "address": {"zip": "420000", "city": "Kazan"},
            "rows": [[1, 2], [3]],
        });
        assert_eq!(
            render(
                "{% for i in trigger.items limit: 2 offset: 1 %}{{ forloop.index }}{{ i }}{% if forloop.last %}.{% endif %}{% endfor %} \
                 {% for i in trigger.items reversed %}{% if i == 'b' %}{% break %}{% endif %}{{ i }}{% endfor %} \
                 {% for i in trigger.items %}{% if forloop.first %}{% continue %}{% endif %}{{ forloop.rindex }}{% endfor %} \
                 {% for n in (1..3) %}{{ n }}{% endfor %} \
                 {% for pair in trigger.address %}{{ pair[0] }}={{ pair[1] }};{% endfor %} \
                 {% for r in trigger.rows %}{% for c in r %}{{ forloop.parentloop.index }}.{{ c }} {% endfor %}{% endfor %}\
                 {% assign n = trigger.items | size %}{% capture who %}{{ profile.first_name }}!{% endcapture %}{{ n }} {{ who }} \
                 {% increment k %}{% increment k %} {{ profile.id }} {{ profile | size }}|\
                 {% tablerow i in trigger.items cols: 3 limit: 4 %}{{ i }}{{ i.x | default: '' }}{% endtablerow %}",
                &trigger
            ),
            "1b2c. dc 321 123 city=Kazan;zip=420000; 1.1 1.2 2.3 4 Ann! 01 ann 2|\
             <tr class=\"row1\"><td class=\"col1\">a</td><td class=\"col2\">b</td><td class=\"col3\">c</td></tr>\
             <tr class=\"row2\"><td class=\"col1\">d</td></tr>"
        );
    }

    /// A name that is not the context's is a mistake in the template, not missing data.
    #[test]
    fn an_unknown_top_level_name_still_fails() {
        let template = Template {
            name: "t".to_owned(),
            parts: BTreeMap::from([(
                "sms".to_owned(),
                BTreeMap::from([(
                    "text".to_owned(),
                    parse_liquid("{{ customer.name }}").unwrap(),
                )]),
            )]),
        };
        let ctx = RenderContext {
            profile: &Map::new(),
            profile_id: "ann",
            event: &Map::new(),
            trigger: &Map::new(),
            journey_id: "cart",
            now: DateTime::UNIX_EPOCH,
            timezone: Tz::UTC,
        };
        let error = template.render("sms", &ctx).unwrap_err();
        assert!(error.contains("Unknown variable"), "{error}");
        assert!(error.contains("requested variable=customer"), "{error}");
    }
}
