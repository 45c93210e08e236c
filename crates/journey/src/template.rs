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
        let mut globals = Map::new();
        globals.insert("profile".to_owned(), Value::Object(profile));
        globals.insert("event".to_owned(), Value::Object(ctx.event.clone()));
        globals.insert("trigger".to_owned(), Value::Object(ctx.trigger.clone()));
        globals.insert(
            "journey".to_owned(),
            serde_json::json!({ "id": ctx.journey_id }),
        );
        let globals = Lenient::new(&Value::Object(globals));
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

/// A value for Liquid in which a missing key reads as `nil` rather than an error, so that
/// `{{ profile.first_name | default: 'friend' }}` works for a customer without a first name,
/// as the language promises ("a missing trait is null").
#[derive(Debug)]
enum Lenient {
    Object {
        value: liquid::model::Value,
        fields: BTreeMap<String, Lenient>,
    },
    Other(liquid::model::Value),
}

static NIL: liquid::model::Value = liquid::model::Value::Nil;

impl Lenient {
    fn new(value: &Value) -> Lenient {
        match value {
            Value::Object(map) => Lenient::Object {
                value: to_liquid(value),
                fields: map
                    .iter()
                    .map(|(k, v)| (k.clone(), Lenient::new(v)))
                    .collect(),
            },
            other => Lenient::Other(to_liquid(other)),
        }
    }

    fn inner(&self) -> &liquid::model::Value {
        match self {
            Lenient::Object { value, .. } | Lenient::Other(value) => value,
        }
    }
}

impl liquid::ValueView for Lenient {
    fn as_debug(&self) -> &dyn std::fmt::Debug {
        self
    }
    fn render(&self) -> liquid::model::DisplayCow<'_> {
        self.inner().render()
    }
    fn source(&self) -> liquid::model::DisplayCow<'_> {
        self.inner().source()
    }
    fn type_name(&self) -> &'static str {
        self.inner().type_name()
    }
    fn query_state(&self, state: liquid::model::State) -> bool {
        self.inner().query_state(state)
    }
    fn to_kstr(&self) -> liquid::model::KStringCow<'_> {
        self.inner().to_kstr()
    }
    fn to_value(&self) -> liquid::model::Value {
        self.inner().to_value()
    }
    fn as_scalar(&self) -> Option<liquid::model::ScalarCow<'_>> {
        self.inner().as_scalar()
    }
    fn as_array(&self) -> Option<&dyn liquid::model::ArrayView> {
        self.inner().as_array()
    }
    fn as_object(&self) -> Option<&dyn liquid::ObjectView> {
        match self {
            Lenient::Object { .. } => Some(self),
            Lenient::Other(value) => value.as_object(),
        }
    }
    fn as_state(&self) -> Option<liquid::model::State> {
        self.inner().as_state()
    }
    fn is_nil(&self) -> bool {
        self.inner().is_nil()
    }
}

impl liquid::ObjectView for Lenient {
    fn as_value(&self) -> &dyn liquid::ValueView {
        self
    }
    fn size(&self) -> i64 {
        match self {
            Lenient::Object { fields, .. } => i64::try_from(fields.len()).unwrap_or(i64::MAX),
            Lenient::Other(_) => 0,
        }
    }
    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = liquid::model::KStringCow<'k>> + 'k> {
        match self {
            Lenient::Object { fields, .. } => Box::new(
                fields
                    .keys()
                    .map(|k| liquid::model::KStringCow::from_ref(k.as_str())),
            ),
            Lenient::Other(_) => Box::new(std::iter::empty()),
        }
    }
    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn liquid::ValueView> + 'k> {
        match self {
            Lenient::Object { fields, .. } => {
                Box::new(fields.values().map(|v| v as &dyn liquid::ValueView))
            }
            Lenient::Other(_) => Box::new(std::iter::empty()),
        }
    }
    fn iter<'k>(
        &'k self,
    ) -> Box<dyn Iterator<Item = (liquid::model::KStringCow<'k>, &'k dyn liquid::ValueView)> + 'k>
    {
        match self {
            Lenient::Object { fields, .. } => Box::new(fields.iter().map(|(k, v)| {
                (
                    liquid::model::KStringCow::from_ref(k.as_str()),
                    v as &dyn liquid::ValueView,
                )
            })),
            Lenient::Other(_) => Box::new(std::iter::empty()),
        }
    }
    fn contains_key(&self, _index: &str) -> bool {
        true
    }
    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn liquid::ValueView> {
        match self {
            Lenient::Object { fields, .. } => Some(
                fields
                    .get(index)
                    .map_or(&NIL as &dyn liquid::ValueView, |v| {
                        v as &dyn liquid::ValueView
                    }),
            ),
            Lenient::Other(_) => None,
        }
    }
}

fn to_liquid(value: &Value) -> liquid::model::Value {
    liquid::model::to_value(value).unwrap_or(liquid::model::Value::Nil)
}
