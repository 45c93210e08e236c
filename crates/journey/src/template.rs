//! Message templates: one Liquid part per channel, parsed once at load.

use std::cell::OnceCell;
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
        let text = |s: &str| Lenient::Other(liquid::model::Value::scalar(s.to_owned()));
        let mut profile = Lenient::fields(ctx.profile);
        profile.insert("id".to_owned(), text(ctx.profile_id));
        let globals = Lenient::object(BTreeMap::from([
            ("profile".to_owned(), Lenient::object(profile)),
            (
                "event".to_owned(),
                Lenient::object(Lenient::fields(ctx.event)),
            ),
            (
                "trigger".to_owned(),
                Lenient::object(Lenient::fields(ctx.trigger)),
            ),
            (
                "journey".to_owned(),
                Lenient::object(BTreeMap::from([("id".to_owned(), text(ctx.journey_id))])),
            ),
        ]));
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
/// as the language promises ("a missing trait is null"). Built straight from the render
/// context's maps, each value converted once.
#[derive(Debug)]
enum Lenient {
    Object {
        fields: BTreeMap<String, Lenient>,
        /// The whole object as one Liquid value, made only if a template asks for it
        /// (`{{ profile }}`, a filter on the object): most read single fields.
        whole: OnceCell<liquid::model::Value>,
    },
    Other(liquid::model::Value),
}

static NIL: liquid::model::Value = liquid::model::Value::Nil;

impl Lenient {
    fn new(value: &Value) -> Lenient {
        match value {
            Value::Object(map) => Lenient::object(Lenient::fields(map)),
            other => Lenient::Other(to_liquid(other)),
        }
    }

    fn fields(map: &Map<String, Value>) -> BTreeMap<String, Lenient> {
        map.iter()
            .map(|(k, v)| (k.clone(), Lenient::new(v)))
            .collect()
    }

    fn object(fields: BTreeMap<String, Lenient>) -> Lenient {
        Lenient::Object {
            fields,
            whole: OnceCell::new(),
        }
    }

    fn inner(&self) -> &liquid::model::Value {
        match self {
            Lenient::Object { fields, whole } => whole.get_or_init(|| {
                liquid::model::Value::Object(
                    fields
                        .iter()
                        .map(|(k, v)| (k.clone().into(), v.inner().clone()))
                        .collect(),
                )
            }),
            Lenient::Other(value) => value,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, trigger: &Value) -> String {
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
}
