//! Loading a journeys workspace: every file read, parsed and cross-checked in one pass, so
//! that a marketer sees every problem at once rather than one per run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::analysis;
use crate::diagnostics::{self, Diagnostic, codes};
use crate::journey_file::{self, Edge, Env};
use crate::model::{Journey, Pos, Segment, Segments, Workspace};
use crate::parse::{self, KnownSegments, OptionalField, Report};
use crate::template::{Template, parse_liquid};
use crate::yaml::{self, Node, NodeValue};

/// The segments file's name inside a workspace.
pub const SEGMENTS_FILE: &str = "segments.yaml";

/// Everything learnt from checking a workspace, valid or not.
#[derive(Debug)]
pub struct LoadReport {
    /// The workspace, when there is no error.
    pub workspace: Option<Workspace>,
    /// Every journey that is valid on its own, sorted by id, even when other files have
    /// errors (so that `waymark graph` can draw it).
    pub journeys: Vec<Arc<Journey>>,
    /// Errors and warnings, sorted by file and position, each with its source line.
    pub diagnostics: Vec<Diagnostic>,
    /// The journey files read.
    pub journey_files: Vec<PathBuf>,
    /// The template files read.
    pub template_files: Vec<PathBuf>,
}

impl LoadReport {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Loads and validates the workspace at `root`: `root/*.yaml` are journeys (except
/// `segments.yaml`), `root/templates/*.yaml` templates named by their file stem;
/// `root/tests/` is left to `waymark test`.
///
/// # Errors
/// Every error and warning found, sorted by file and position, when there is at least one
/// error. On success the warnings come with the workspace.
pub fn load(root: &Path) -> Result<(Workspace, Vec<Diagnostic>), Vec<Diagnostic>> {
    let report = load_report(root, &[]);
    match report.workspace {
        Some(workspace) => Ok((workspace, report.diagnostics)),
        None => Err(report.diagnostics),
    }
}

/// Like [`load`], but also reads `extra_journeys` as journeys of the workspace (a file
/// `waymark check` was given that does not sit in `root`), and reports what was read
/// whether or not the workspace is valid.
pub fn load_report(root: &Path, extra_journeys: &[PathBuf]) -> LoadReport {
    let mut diagnostics = Vec::new();
    let mut sources: BTreeMap<PathBuf, String> = BTreeMap::new();

    let (mut journey_files, segments_file) = list_workspace(root, &mut diagnostics);
    for extra in extra_journeys {
        if !journey_files.contains(extra) {
            journey_files.push(extra.clone());
        }
    }
    let template_files = list_yaml(&join(root, "templates"));

    let segments = match &segments_file {
        Some(path) => match read_yaml(path, &mut sources, &mut diagnostics) {
            Some(node) => load_segments(path, &node, &mut diagnostics),
            None => SegmentsSeen::default(),
        },
        None => SegmentsSeen::default(),
    };

    let mut templates = BTreeMap::new();
    let mut template_names = BTreeSet::new();
    for path in &template_files {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        template_names.insert(name.to_owned());
        if let Some(node) = read_yaml(path, &mut sources, &mut diagnostics)
            && let Some(t) = load_template(path, name, &node, &mut diagnostics)
        {
            templates.insert(name.to_owned(), t);
        }
    }

    let env = Env {
        segments: &segments,
        templates: &templates,
        template_names: &template_names,
    };
    let mut parsed_files = Vec::new();
    for path in &journey_files {
        let Some(node) = read_yaml(path, &mut sources, &mut diagnostics) else {
            continue;
        };
        let mut r = Report {
            file: path,
            diagnostics: &mut diagnostics,
        };
        let parsed = journey_file::parse_journey(&mut r, &node, &env, path);
        parsed_files.push((path, parsed));
    }
    let owners = id_owners(&parsed_files);
    let mut journeys: Vec<Journey> = Vec::new();
    for (path, parsed) in parsed_files {
        if let Some((id, pos, len)) = &parsed.id {
            let owner = owners[id];
            if owner != path {
                diagnostics.push(
                    Diagnostic::error(
                        path,
                        *pos,
                        codes::DUPLICATE_ID,
                        format!(
                            "duplicate journey id `{id}`: {} already has it",
                            owner.display()
                        ),
                    )
                    .with_len(*len),
                );
                continue;
            }
        }
        if let Some(mut journey) = parsed.journey {
            journey.version = version(path, &sources, &parsed.templates, root);
            journeys.push(journey);
        }
    }

    for d in &mut diagnostics {
        if let Some(source) = sources.get(&d.file) {
            d.attach_source(source);
        }
    }
    diagnostics::sort(&mut diagnostics);
    journeys.sort_by(|a, b| a.id.cmp(&b.id));
    let journeys: Vec<Arc<Journey>> = journeys.into_iter().map(Arc::new).collect();
    let workspace = (!diagnostics.iter().any(Diagnostic::is_error)).then(|| Workspace {
        root: root.to_path_buf(),
        journeys: journeys.clone(),
        segments: Arc::new(Segments {
            by_name: segments.loaded,
        }),
        templates: Arc::new(templates),
    });
    LoadReport {
        workspace,
        journeys,
        diagnostics,
        journey_files,
        template_files,
    }
}

/// Which file keeps each journey id when several files claim it; the others are told
/// it is taken. The file named after the id (`welcome.yaml` for `welcome`) is the id's
/// natural home, so a copy made from it under another name is the one at fault, whatever
/// the names' order; otherwise the first file in name order keeps it.
fn id_owners<'p>(parsed: &[(&'p PathBuf, journey_file::Parsed)]) -> BTreeMap<String, &'p PathBuf> {
    let mut owners: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for (path, p) in parsed {
        let Some((id, ..)) = &p.id else { continue };
        let named_after = |path: &Path| path.file_stem().is_some_and(|s| s == id.as_str());
        owners
            .entry(id.clone())
            .and_modify(|owner| {
                if named_after(path) && !named_after(owner) {
                    *owner = path;
                }
            })
            .or_insert(path);
    }
    owners
}

/// Reads and parses a file, keeping its text for diagnostics and version hashes.
fn read_yaml(
    path: &Path,
    sources: &mut BTreeMap<PathBuf, String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Node> {
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            diagnostics.push(Diagnostic::error(
                path,
                Pos::default(),
                codes::IO,
                format!("cannot read file: {e}"),
            ));
            return None;
        }
    };
    let parsed = yaml::parse(&source, path);
    sources.insert(path.to_path_buf(), source);
    parsed.map_err(|d| diagnostics.push(d)).ok()
}

/// The journey files of a workspace (sorted) and its segments file, if any.
fn list_workspace(
    root: &Path,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Vec<PathBuf>, Option<PathBuf>) {
    if !root.is_dir() {
        diagnostics.push(Diagnostic::error(
            root,
            Pos::default(),
            codes::IO,
            "not a directory: expected a journeys workspace",
        ));
        return (Vec::new(), None);
    }
    let mut journeys = Vec::new();
    let mut segments = None;
    for path in list_yaml(root) {
        if path.file_name().is_some_and(|n| n == SEGMENTS_FILE) {
            segments = Some(path);
        } else {
            journeys.push(path);
        }
    }
    (journeys, segments)
}

/// The `*.yaml` and `*.yml` files directly in `dir`, sorted; none if it does not exist.
fn list_yaml(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .map(|p| join(dir, p.file_name().expect("a listed file has a name")))
        .collect();
    files.sort();
    files
}

/// `dir/name`, but just `name` in `.`: `waymark check` run inside a workspace names its
/// files `cart.yaml`, not `./cart.yaml`.
fn join(dir: &Path, name: impl AsRef<Path>) -> PathBuf {
    if dir == Path::new(".") {
        name.as_ref().to_path_buf()
    } else {
        dir.join(name)
    }
}

/// A journey's version: FNV-1a 64 over its file and each template it sends, in name order,
/// so editing either makes a new version that new enrollments pin.
fn version(
    path: &Path,
    sources: &BTreeMap<PathBuf, String>,
    templates: &BTreeSet<String>,
    root: &Path,
) -> String {
    let mut hash = Fnv1a64::new();
    hash.write(sources.get(path).map_or(&b""[..], |s| s.as_bytes()));
    for name in templates {
        let file = template_file(root, name, sources);
        hash.write(&[0xff]);
        hash.write(name.as_bytes());
        hash.write(&[0]);
        hash.write(file.map_or(&b""[..], |s| s.as_bytes()));
    }
    format!("{:016x}", hash.finish())
}

fn template_file<'s>(
    root: &Path,
    name: &str,
    sources: &'s BTreeMap<PathBuf, String>,
) -> Option<&'s String> {
    let dir = join(root, "templates");
    ["yaml", "yml"]
        .iter()
        .find_map(|ext| sources.get(&dir.join(format!("{name}.{ext}"))))
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike `DefaultHasher`.
pub(crate) struct Fnv1a64(u64);

impl Fnv1a64 {
    pub fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// The segments file as far as it could be read: every name written (so a journey naming
/// a segment whose condition is broken is not told it does not exist) and those that
/// loaded.
#[derive(Default)]
struct SegmentsSeen {
    names: BTreeSet<String>,
    loaded: BTreeMap<String, Segment>,
}

impl KnownSegments for SegmentsSeen {
    fn has_segment(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn segment_names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }
}

fn load_segments(path: &Path, root: &Node, diagnostics: &mut Vec<Diagnostic>) -> SegmentsSeen {
    let mut seen = SegmentsSeen::default();
    let mut r = Report {
        file: path,
        diagnostics,
    };
    if root.is_null() {
        return seen;
    }
    let Some(top) = parse::map(&mut r, root, "segments.yaml") else {
        return seen;
    };
    parse::check_keys(&mut r, top, &["segments"], "segments.yaml");
    let Some(node) = parse::get(top, "segments") else {
        return seen;
    };
    if node.is_null() {
        return seen;
    }
    let Some(entries) = parse::map(&mut r, node, "`segments`") else {
        return seen;
    };
    seen.names = entries.iter().map(|(k, _)| k.name.clone()).collect();
    // Each `in_segment` reference, for the cycle check.
    let mut edges = Vec::new();
    for (i, (key, value)) in entries.iter().enumerate() {
        let what = format!("segment `{}`", key.name);
        let Some(fields) = parse::map(&mut r, value, &what) else {
            continue;
        };
        parse::check_keys(&mut r, fields, &["description", "where"], &what);
        let description =
            parse::get(fields, "description").map(|n| parse::string(&mut r, n, "`description`"));
        let condition = parse::require(&mut r, fields, "where", (key.pos, key.len), &what)
            .and_then(|n| {
                let expr = parse::expr(&mut r, n, &seen, "`where`")?;
                for target in expr.segment_references() {
                    if let Some(to) = entries.iter().position(|(k, _)| k.name == target) {
                        edges.push(Edge {
                            from: i,
                            to,
                            pos: n.pos,
                            len: n.len,
                        });
                    }
                }
                Some(expr)
            });
        if let (Some(condition), Some(description)) = (condition, description.field()) {
            seen.loaded.insert(
                key.name.clone(),
                Segment {
                    name: key.name.clone(),
                    description,
                    condition,
                    pos: key.pos,
                },
            );
        }
    }
    report_segment_cycles(&mut r, entries, &edges);
    seen
}

/// Segments whose conditions refer to each other in a circle can never be evaluated.
fn report_segment_cycles(r: &mut Report<'_>, entries: &[(yaml::Key, Node)], edges: &[Edge]) {
    let mut adjacency: Vec<Vec<&Edge>> = vec![Vec::new(); entries.len()];
    for edge in edges {
        adjacency[edge.from].push(edge);
    }
    for component in analysis::strongly_connected(&adjacency) {
        let Some(&first) = component.iter().min() else {
            continue;
        };
        let Some(path) = analysis::shortest_cycle(&adjacency, &component, first) else {
            continue;
        };
        let names: Vec<String> = path
            .iter()
            .map(|e| format!("`{}`", entries[e.from].0.name))
            .chain(std::iter::once(format!("`{}`", entries[first].0.name)))
            .collect();
        let closing = path.last().expect("a cycle has at least one reference");
        r.error_at(
            closing.pos,
            closing.len,
            codes::SEGMENT_CYCLE,
            format!(
                "segment cycle: {} refer to each other through `in_segment`, so none of them can be evaluated",
                names.join(" -> ")
            ),
        );
    }
}

/// The channels the language names (section 5), which take `text`; any other channel
/// name is a webhook, which takes `body`.
pub(crate) const MESSENGERS: [&str; 7] = [
    "email", "sms", "telegram", "whatsapp", "vk", "viber", "push",
];

/// The fields a template part may have. `push` may also carry a notification `title`,
/// an `image` URL, which a push notification shows beside its text, and `data`: key-value
/// pairs for the app (a deep link, an order id). A webhook part may carry `text` beside
/// its `body`: an adapter of another kind under a name of its own (Slack's) reads both.
fn template_fields(channel: &str) -> &'static [&'static str] {
    match channel {
        "email" => &["subject", "html", "text"],
        "push" => &["title", "text", "image", PUSH_DATA],
        c if MESSENGERS.contains(&c) => &["text"],
        _ => &["body", "text"],
    }
}

/// A template part with a field its channel does not take, or without one it needs.
struct ShapeProblem {
    /// The field at fault; `None`: the part as a whole (its channel's name).
    field: Option<usize>,
    why: &'static str,
    /// The part may be right for a channel `waymark check` cannot see.
    warning: bool,
}

fn template_shape_problem(channel: &str, fields: &[(yaml::Key, Node)]) -> Option<ShapeProblem> {
    let at = |f: &str| fields.iter().position(|(k, _)| k.name == f);
    let has = |f: &str| at(f).is_some();
    let lacks = |why| {
        Some(ShapeProblem {
            field: None,
            why,
            warning: false,
        })
    };
    let messenger = MESSENGERS.contains(&channel);
    if let (true, Some(body)) = (messenger, at("body")) {
        let why = if channel == "email" {
            "`body` is for webhooks: an email part has `subject` and `html` or `text`"
        } else {
            "`body` is for webhooks: this channel sends the part's `text`"
        };
        return Some(ShapeProblem {
            field: Some(body),
            why,
            warning: false,
        });
    }
    match channel {
        "email" if !has("subject") => lacks("an email part needs a `subject`"),
        "email" if !has("html") && !has("text") => {
            lacks("an email part needs `html` or `text`, or both")
        }
        "email" => None,
        _ if messenger && !has("text") => lacks("a messenger part needs `text`"),
        _ if messenger || has("body") => None,
        // `waymark check` knows channels by name only, and takes a name the language does
        // not know for a webhook, whose adapter posts `body` and nothing else. A
        // third-party kind under its own name (Slack's) may read `text` alone, though.
        _ if has("text") => Some(ShapeProblem {
            field: None,
            why: "a webhook part needs `body`, the JSON the webhook posts; `text` alone is sent by no webhook",
            warning: true,
        }),
        _ => lacks("a webhook part needs `body`"),
    }
}

/// A push part's map of texts for the app, each rendered as the field `data.NAME`.
const PUSH_DATA: &str = "data";

/// The entries of a push part's `data` map as `(data.NAME, text)`. FCM refuses the
/// names it reserves (`from`, `message_type`, and those starting with `google.` or
/// `gcm.notification.`), so they are errors here rather than refused messages later.
fn push_data<'n>(r: &mut Report<'_>, node: &'n Node, part_what: &str) -> Vec<(String, &'n Node)> {
    let Some(entries) = parse::map(r, node, &format!("`data` in {part_what}")) else {
        return Vec::new();
    };
    let mut texts = Vec::new();
    for (key, value) in entries {
        let name = key.name.as_str();
        let reserved = matches!(name, "from" | "message_type")
            || name.starts_with("google.")
            || name.starts_with("gcm.notification.");
        if reserved {
            r.error_key(
                key,
                codes::TEMPLATE_SHAPE,
                format!("`data.{name}` in {part_what}: FCM reserves this name for itself"),
            );
        } else {
            texts.push((format!("{PUSH_DATA}.{name}"), value));
        }
    }
    texts
}

fn load_template(
    path: &Path,
    name: &str,
    root: &Node,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Template> {
    let mut r = Report {
        file: path,
        diagnostics,
    };
    let errors = r.error_count();
    let what = format!("template `{name}`");
    let parts_node = match &root.value {
        NodeValue::Map(parts) if !parts.is_empty() => parts,
        _ => {
            r.error_at(
                root.pos.max(Pos { line: 1, column: 1 }),
                0,
                codes::TEMPLATE_SHAPE,
                format!("{what} needs one part per channel, such as `email: {{subject: ..., text: ...}}`"),
            );
            return None;
        }
    };
    let mut parts = BTreeMap::new();
    for (channel, part) in parts_node {
        let part_what = format!("the `{}` part of {what}", channel.name);
        let Some(fields) = parse::map(&mut r, part, &part_what) else {
            continue;
        };
        let allowed = template_fields(&channel.name);
        // `body` on a messenger is a shape problem below, not an unknown key.
        let known = [allowed, &["body"]].concat();
        parse::check_keys(&mut r, fields, &known, &part_what);
        if let Some(problem) = template_shape_problem(&channel.name, fields) {
            let key = problem.field.map_or(channel, |i| &fields[i].0);
            let message = format!("{}, in {part_what}", problem.why);
            if problem.warning {
                r.warning_at(key.pos, key.len, codes::TEMPLATE_SHAPE, message);
            } else {
                r.error_key(key, codes::TEMPLATE_SHAPE, message);
            }
        }
        // Each text with the name it is rendered under: a field's own, or `data.NAME` for
        // the entries of a push part's `data` map.
        let mut sources = Vec::new();
        for (field, value) in fields {
            if !allowed.contains(&field.name.as_str()) {
                continue;
            }
            if field.name == PUSH_DATA {
                sources.extend(push_data(&mut r, value, &part_what));
            } else {
                sources.push((field.name.clone(), value));
            }
        }
        let mut texts = BTreeMap::new();
        for (field, value) in sources {
            let Some(text) = parse::string(&mut r, value, &format!("`{field}`")) else {
                continue;
            };
            match parse_liquid(&text) {
                Ok(liquid) => {
                    texts.insert(field, liquid);
                }
                Err(e) => {
                    let (offset, why) = liquid_error(&e, &text);
                    let pos = offset.map_or(value.pos, |o| value.pos_at(o));
                    r.error_at(
                        pos,
                        if pos == value.pos { value.len } else { 1 },
                        codes::INVALID_LIQUID,
                        format!(
                            "invalid Liquid in `{}.{field}` of {what}: {why}",
                            channel.name
                        ),
                    );
                }
            }
        }
        parts.insert(channel.name.clone(), texts);
    }
    (r.error_count() == errors).then(|| Template {
        name: name.to_owned(),
        parts,
    })
}

/// Liquid's errors are drawn like a compiler's (`--> 1:4`, the line, `= expected ...`)
/// and carry `name=value` details; keep the reason and, for a problem on the first line,
/// the character offset into `text`. An unknown filter or tag is named, with the closest
/// known one, rather than listing every name Liquid has.
fn liquid_error(error: &str, text: &str) -> (Option<usize>, String) {
    let detail = |name: &str| {
        error
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix('='))
            .map(str::trim)
    };
    let known = |name: &str| -> Vec<&str> {
        detail(name).map_or_else(Vec::new, |list| list.split(", ").collect())
    };
    // Liquid says `--> LINE:COLUMN` (1-based) within the text: as a character offset.
    let offset = error
        .split_once("--> ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|at| at.split_once(':'))
        .and_then(|(line, column)| {
            Some(crate::yaml::offset_of(
                text,
                line.parse().ok()?,
                column.parse().ok()?,
            ))
        });
    let char_offset = |byte: usize| text[..byte].chars().count();
    if let Some(filter) = detail("requested filter") {
        let hint = parse::suggestion(filter, known("available filters"));
        // Where the filter is written: after a `|`, so that a name also used as a
        // variable is not found instead.
        let at = text.match_indices('|').find_map(|(bar, _)| {
            let rest = &text[bar + 1..];
            let name_at = bar + 1 + (rest.len() - rest.trim_start().len());
            text[name_at..]
                .starts_with(filter)
                .then(|| char_offset(name_at))
        });
        return (at, format!("unknown filter `{filter}`{hint}"));
    }
    if let Some(tag) = detail("requested") {
        let mut names = known("available tags");
        names.extend(known("available blocks"));
        let hint = parse::suggestion(tag, names);
        return (offset, format!("unknown tag `{tag}`{hint}"));
    }
    let reason: Vec<&str> = error
        .lines()
        .filter_map(|l| l.trim().strip_prefix("= "))
        .collect();
    let reason = if reason.is_empty() {
        let first = error.lines().next().unwrap_or_default();
        let first = first.trim_start_matches("liquid:").trim();
        match detail("cause") {
            Some(cause) => format!("{first}: {cause}"),
            None => first.to_owned(),
        }
    } else {
        reason.join("; ")
    };
    (offset, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The diagnostics of one template file, as `(line:column, severity, message)`.
    fn template_problems(src: &str) -> Vec<(String, &'static str, String)> {
        let file = Path::new("templates/t.yaml");
        let root = yaml::parse(src, file).unwrap();
        let mut diagnostics = Vec::new();
        load_template(file, "t", &root, &mut diagnostics);
        diagnostics
            .into_iter()
            .map(|d| {
                assert_eq!(d.code, codes::TEMPLATE_SHAPE, "{d:?}");
                let at = format!("{}:{}", d.pos.line, d.pos.column);
                (at, d.severity.as_str(), d.message)
            })
            .collect()
    }

    #[test]
    fn each_channel_takes_its_own_fields() {
        let ok = "email: {subject: Hi, html: <p>Hi</p>}\nsms: {text: Hi}\ntelegram: {text: Hi}\n\
                  whatsapp: {text: Hi}\nvk: {text: Hi}\nviber: {text: Hi}\npush: {text: Hi}\n\
                  crm_task: {body: '{}'}\nsales_alerts: {text: Hi, body: '[]'}\n";
        assert_eq!(template_problems(ok), []);
    }

    #[test]
    fn body_on_a_messenger_is_refused_where_it_is() {
        let problems = template_problems("email: {subject: Hi, text: Hi}\nsms:\n  body: Hi\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let (at, severity, message) = &problems[0];
        assert_eq!((at.as_str(), *severity), ("3:3", "error"));
        assert_eq!(
            message,
            "`body` is for webhooks: this channel sends the part's `text`, in the `sms` part of template `t`"
        );

        for channel in ["telegram", "whatsapp", "vk", "viber", "push"] {
            let problems = template_problems(&format!("{channel}: {{text: Hi, body: Hi}}\n"));
            assert_eq!(problems.len(), 1, "{channel}: {problems:#?}");
            assert_eq!(problems[0].1, "error");
        }
        let problems = template_problems("email: {subject: Hi, body: Hi}\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].2.contains("an email part has `subject`"));
    }

    #[test]
    fn a_webhook_part_needs_a_body() {
        let problems = template_problems("crm_task:\n  text: call ann\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let (at, severity, message) = &problems[0];
        // A third-party kind under its own name (Slack's) may read `text` alone, which
        // `waymark check` cannot tell from a webhook: a warning, not an error.
        assert_eq!((at.as_str(), *severity), ("1:1", "warning"));
        assert!(
            message.starts_with("a webhook part needs `body`"),
            "{message}"
        );
        assert!(message.ends_with("in the `crm_task` part of template `t`"));

        let problems = template_problems("crm_task: {}\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].1, "error");
    }

    #[test]
    fn a_messenger_part_needs_text() {
        let problems = template_problems("push: {title: Hi}\n");
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].1, "error");
        assert!(problems[0].2.starts_with("a messenger part needs `text`"));
    }
}
