//! Message templates: one Liquid part per channel, parsed once at load.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use serde_json::{Map, Value};

static PARSER: LazyLock<liquid::Parser> = LazyLock::new(|| {
    liquid::ParserBuilder::with_stdlib()
        .build()
        .expect("the standard Liquid library builds")
});

/// Parses Liquid source with the standard filters.
///
/// # Errors
/// Liquid's own message for a template that does not parse.
pub fn parse_liquid(source: &str) -> Result<Liquid, String> {
    PARSER
        .parse(source)
        .map(|t| Liquid {
            source: source.into(),
            template: Arc::new(t),
        })
        .map_err(|e| e.to_string())
}

/// One parsed Liquid text.
#[derive(Clone)]
pub struct Liquid {
    pub source: Arc<str>,
    template: Arc<liquid::Template>,
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
        let mut profile = ctx.profile.clone();
        profile.insert("id".to_owned(), Value::String(ctx.profile_id.to_owned()));
        let globals = liquid::object!({
            "profile": to_liquid(&Value::Object(profile)),
            "event": to_liquid(&Value::Object(ctx.event.clone())),
            "trigger": to_liquid(&Value::Object(ctx.trigger.clone())),
            "journey": liquid::object!({ "id": ctx.journey_id }),
        });
        part.iter()
            .map(|(field, liquid)| {
                liquid
                    .template
                    .render(&globals)
                    .map(|text| (field.clone(), text))
                    .map_err(|e| format!("template `{}`, {channel}.{field}: {e}", self.name))
            })
            .collect()
    }
}

fn to_liquid(value: &Value) -> liquid::model::Value {
    liquid::model::to_value(value).unwrap_or(liquid::model::Value::Nil)
}
