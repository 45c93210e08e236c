//! Where a template's names are looked up, leniently, as the language reads data: a
//! missing key or index anywhere is nil, and so is any member of nil.
//!
//! Liquid's own runtime is strict below the top level, and every frame it makes (the
//! root, each `for` body) looks up its own names itself. So the root here is ours, and so
//! are the loops ([`super::blocks`]): every name a template can read, whether from the
//! context, from `assign`/`capture` or a loop variable, is looked up by [`find`].

use std::cell::RefCell;
use std::collections::BTreeSet;

use liquid_core::model::{KString, KStringCow, KStringRef, ScalarCow, try_find};
use liquid_core::runtime::{PartialStore, Registers};
use liquid_core::{Error, Object, Renderable, Result, Runtime, Value, ValueCow, ValueView};
use serde::Serialize;
use serde_json::{Map, Value as JsonValue};

use super::RenderContext;
use super::filters::Clock;

/// `path` in `value`, leniently: a missing key or index, or a member of anything without
/// members (nil, a number), is nil.
pub(super) fn find<'v>(value: &'v dyn ValueView, path: &[ScalarCow<'_>]) -> ValueCow<'v> {
    try_find(value, path).unwrap_or(ValueCow::Owned(Value::Nil))
}

/// The names the language gives a template (spec 5).
const CONTEXT: [&str; 4] = ["profile", "event", "trigger", "journey"];

/// The outermost frame of a render: the context, and the names a template sets itself
/// (`assign`, `capture`, `increment`), which shadow it as in Liquid.
pub(super) struct Root<'a> {
    ctx: &'a RenderContext<'a>,
    assigned: RefCell<Object>,
    counters: RefCell<Object>,
    registers: Registers,
}

impl<'a> Root<'a> {
    pub(super) fn new(ctx: &'a RenderContext<'a>) -> Self {
        let registers = Registers::default();
        *registers.get_mut::<Clock>() = Clock(Some((ctx.now, ctx.timezone)));
        Root {
            ctx,
            assigned: RefCell::default(),
            counters: RefCell::default(),
            registers,
        }
    }

    /// `path` below the context name `root`, converting only what it finds; `None` for a
    /// name that is not the context's.
    fn context(&self, root: &str, path: &[ScalarCow<'_>]) -> Option<Value> {
        let ctx = self.ctx;
        let id = |id: &str| Value::scalar(id.to_owned());
        Some(match root {
            "profile" => match path.split_first() {
                None => {
                    let mut whole = to_liquid(ctx.profile);
                    if let Value::Object(fields) = &mut whole {
                        fields.insert("id".into(), id(ctx.profile_id));
                    }
                    whole
                }
                Some((key, rest)) if key.to_kstr() == "id" => {
                    find(&id(ctx.profile_id), rest).into_owned()
                }
                Some(_) => lookup_map(ctx.profile, path),
            },
            "event" => lookup_map(ctx.event, path),
            "trigger" => lookup_map(ctx.trigger, path),
            "journey" => {
                let journey = Object::from_iter([("id".into(), id(ctx.journey_id))]);
                find(&journey, path).into_owned()
            }
            _ => return None,
        })
    }
}

impl Runtime for Root<'_> {
    fn partials(&self) -> &dyn PartialStore {
        &NoPartials
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        None
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        let mut roots: BTreeSet<_> = CONTEXT.into_iter().map(KStringCow::from_static).collect();
        roots.extend(
            self.assigned
                .borrow()
                .keys()
                .map(|k| KStringCow::from_string(k.to_string())),
        );
        roots
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        let (root, rest) = path.split_first()?;
        let root = root.to_kstr();
        if let Some(value) = self.assigned.borrow().get(root.as_str()) {
            return Some(ValueCow::Owned(find(value, rest).into_owned()));
        }
        self.context(root.as_str(), rest).map(ValueCow::Owned)
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>> {
        // A name that is neither the context's nor set by the template is a mistake in
        // the template, not missing data: Liquid's error, naming what there is.
        self.try_get(path).ok_or_else(|| {
            let requested = path
                .first()
                .map_or_else(|| "nil".to_owned(), |r| r.to_kstr().to_string());
            let available: Vec<String> = self.roots().iter().map(ToString::to_string).collect();
            Error::with_msg("Unknown variable")
                .context("requested variable", requested)
                .context("available variables", available.join(", "))
        })
    }

    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        self.assigned.borrow_mut().insert(name, val)
    }

    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.counters.borrow_mut().insert(name, val)
    }

    fn get_index<'s>(&'s self, name: &str) -> Option<ValueCow<'s>> {
        self.counters
            .borrow()
            .get(name)
            .cloned()
            .map(ValueCow::Owned)
    }

    fn registers(&self) -> &Registers {
        &self.registers
    }
}

/// Templates include no other templates.
#[derive(Debug)]
struct NoPartials;

impl PartialStore for NoPartials {
    fn contains(&self, _name: &str) -> bool {
        false
    }
    fn names(&self) -> Vec<&str> {
        Vec::new()
    }
    fn try_get(&self, _name: &str) -> Option<std::sync::Arc<dyn Renderable>> {
        None
    }
    fn get(&self, name: &str) -> Result<std::sync::Arc<dyn Renderable>> {
        Err(Error::with_msg("templates include no other templates")
            .context("name", name.to_owned()))
    }
}

/// A loop body's frame: the loop's own names (its variable and `forloop` or `tablerow`)
/// over the enclosing frame, looked up as leniently as the rest.
pub(super) struct LoopFrame<'f> {
    parent: &'f dyn Runtime,
    names: [(&'f str, &'f dyn ValueView); 2],
}

impl<'f> LoopFrame<'f> {
    pub(super) fn new(parent: &'f dyn Runtime, names: [(&'f str, &'f dyn ValueView); 2]) -> Self {
        LoopFrame { parent, names }
    }

    fn own(&self, name: &ScalarCow<'_>) -> Option<&'f dyn ValueView> {
        let name = name.to_kstr();
        self.names
            .iter()
            .find(|(n, _)| *n == name.as_str())
            .map(|(_, v)| *v)
    }
}

impl Runtime for LoopFrame<'_> {
    fn partials(&self) -> &dyn PartialStore {
        self.parent.partials()
    }

    fn name(&self) -> Option<KStringRef<'_>> {
        self.parent.name()
    }

    fn roots(&self) -> BTreeSet<KStringCow<'_>> {
        let mut roots = self.parent.roots();
        roots.extend(self.names.iter().map(|(n, _)| KStringCow::from_ref(n)));
        roots
    }

    fn try_get(&self, path: &[ScalarCow<'_>]) -> Option<ValueCow<'_>> {
        let (root, rest) = path.split_first()?;
        match self.own(root) {
            Some(value) => Some(find(value, rest)),
            None => self.parent.try_get(path),
        }
    }

    fn get(&self, path: &[ScalarCow<'_>]) -> Result<ValueCow<'_>> {
        match path
            .split_first()
            .and_then(|(root, rest)| Some((self.own(root)?, rest)))
        {
            Some((value, rest)) => Ok(find(value, rest)),
            None => self.parent.get(path),
        }
    }

    fn set_global(&self, name: KString, val: Value) -> Option<Value> {
        self.parent.set_global(name, val)
    }

    fn set_index(&self, name: KString, val: Value) -> Option<Value> {
        self.parent.set_index(name, val)
    }

    fn get_index<'s>(&'s self, name: &str) -> Option<ValueCow<'s>> {
        self.parent.get_index(name)
    }

    fn registers(&self) -> &Registers {
        self.parent.registers()
    }
}

/// `path` in a JSON value, converting only what is found.
fn lookup(value: &JsonValue, path: &[ScalarCow<'_>]) -> Value {
    let Some((index, rest)) = path.split_first() else {
        return to_liquid(value);
    };
    let child = match value {
        JsonValue::Object(map) => return lookup_map(map, path),
        JsonValue::Array(items) => index
            .to_integer()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| items.get(i)),
        _ => None,
    };
    match child {
        Some(child) => lookup(child, rest),
        None => unlisted(value, path),
    }
}

fn lookup_map(map: &Map<String, JsonValue>, path: &[ScalarCow<'_>]) -> Value {
    let Some((key, rest)) = path.split_first() else {
        return to_liquid(map);
    };
    match map.get(key.to_kstr().as_str()) {
        Some(child) => lookup(child, rest),
        None => unlisted(map, path),
    }
}

/// An index the JSON has no entry for: what Liquid makes of it (`size`, `first`, `last`,
/// an index from the end), else nil.
fn unlisted(value: &impl Serialize, path: &[ScalarCow<'_>]) -> Value {
    let index = &path[0];
    let computed = matches!(index.to_kstr().as_str(), "size" | "first" | "last")
        || index.to_integer().is_some_and(|i| i < 0);
    if computed {
        find(&to_liquid(value), path).into_owned()
    } else {
        Value::Nil
    }
}

fn to_liquid(value: &impl Serialize) -> Value {
    liquid_core::model::to_value(value).unwrap_or(Value::Nil)
}
