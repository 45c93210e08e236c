//! Diagrams of a journey, for reviews and docs: Mermaid (renders on GitHub and GitLab) and
//! Graphviz DOT.
//!
//! Both are drawn from one description of nodes and edges, so they always agree.

use std::fmt::Write as _;

use crate::model::{Audience, ChannelChoice, Journey, StepIdx, StepKind, Trigger};

/// A Mermaid flowchart of `journey`.
pub fn mermaid(journey: &Journey) -> String {
    let diagram = Diagram::of(journey);
    let mut out = String::from("flowchart TD\n");
    for node in &diagram.nodes {
        let label = node
            .lines
            .iter()
            .map(|l| mermaid_escape(l))
            .collect::<Vec<_>>()
            .join("<br/>");
        let (open, close) = match node.shape {
            Shape::Terminal => ("([", "])"),
            Shape::Decision => ("{", "}"),
            Shape::Step => ("[", "]"),
        };
        let _ = writeln!(out, "    {}{open}\"{label}\"{close}", node.id);
    }
    for edge in &diagram.edges {
        let arrow = if edge.dashed { "-.->" } else { "-->" };
        match &edge.label {
            Some(label) => {
                let _ = writeln!(
                    out,
                    "    {} {arrow}|\"{}\"| {}",
                    edge.from,
                    mermaid_escape(label),
                    edge.to
                );
            }
            None => {
                let _ = writeln!(out, "    {} {arrow} {}", edge.from, edge.to);
            }
        }
    }
    out
}

/// A Graphviz DOT digraph of `journey`.
pub fn dot(journey: &Journey) -> String {
    let diagram = Diagram::of(journey);
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&journey.id));
    out.push_str("    node [shape=box, style=rounded];\n");
    for node in &diagram.nodes {
        let label = node
            .lines
            .iter()
            .map(|l| dot_escape(l))
            .collect::<Vec<_>>()
            .join("\\n");
        let shape = match node.shape {
            Shape::Terminal => ", shape=oval",
            Shape::Decision => ", shape=diamond, style=solid",
            Shape::Step => "",
        };
        let _ = writeln!(out, "    {} [label=\"{label}\"{shape}];", node.id);
    }
    for edge in &diagram.edges {
        let mut attributes = Vec::new();
        if let Some(label) = &edge.label {
            attributes.push(format!("label=\"{}\"", dot_escape(label)));
        }
        if edge.dashed {
            attributes.push("style=dashed".to_owned());
        }
        let attributes = if attributes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", attributes.join(", "))
        };
        let _ = writeln!(out, "    {} -> {}{attributes};", edge.from, edge.to);
    }
    out.push_str("}\n");
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The entry and `exit` steps.
    Terminal,
    /// `branch` and `split`.
    Decision,
    Step,
}

struct Node {
    id: String,
    lines: Vec<String>,
    shape: Shape,
}

struct Edge {
    from: String,
    to: String,
    label: Option<String>,
    /// A journey-wide `on:` transition rather than the step's own way on.
    dashed: bool,
}

struct Diagram {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
}

/// The diagram id of the entry node; step ids get a prefix, so no step can clash with it
/// or with a Mermaid keyword such as `end`.
const ENTRY: &str = "entry";

impl Diagram {
    fn of(journey: &Journey) -> Diagram {
        let ids: Vec<String> = journey
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| node_id(i, &step.id))
            .collect();
        let id = |idx: StepIdx| ids[idx.0].clone();
        let mut nodes = vec![Node {
            id: ENTRY.to_owned(),
            lines: trigger_lines(&journey.trigger),
            shape: Shape::Terminal,
        }];
        let mut edges = vec![Edge {
            from: ENTRY.to_owned(),
            to: id(journey.start),
            label: None,
            dashed: false,
        }];
        let mut edge = |from: usize, to: StepIdx, label: Option<String>| {
            edges.push(Edge {
                from: ids[from].clone(),
                to: id(to),
                label,
                dashed: false,
            });
        };
        for (i, step) in journey.steps.iter().enumerate() {
            let shape = match step.kind {
                StepKind::Branch { .. } | StepKind::Split { .. } => Shape::Decision,
                StepKind::Exit { .. } => Shape::Terminal,
                _ => Shape::Step,
            };
            nodes.push(Node {
                id: ids[i].clone(),
                lines: vec![step.id.clone(), detail(&step.kind)],
                shape,
            });
            match &step.kind {
                StepKind::Branch { arms, otherwise } => {
                    for arm in arms {
                        edge(i, arm.goto, Some(format!("if {}", arm.condition.source())));
                    }
                    edge(i, *otherwise, Some("else".to_owned()));
                }
                StepKind::Split { variants } => {
                    for v in variants {
                        edge(i, v.goto, Some(format!("{} ({})", v.name, v.weight)));
                    }
                }
                StepKind::WaitFor {
                    event,
                    timeout,
                    on_event,
                    on_timeout,
                } => {
                    edge(i, *on_event, Some(format!("on {}", event.event)));
                    if let (Some(timeout), Some(to)) = (timeout, on_timeout) {
                        edge(
                            i,
                            *to,
                            Some(format!("timeout {}", format_duration(*timeout))),
                        );
                    }
                }
                _ => {}
            }
            if let Some(next) = step.next {
                edge(i, next, None);
            }
        }
        for back in &journey.on {
            for (i, from) in ids.iter().enumerate() {
                if back.applies_at(StepIdx(i)) {
                    edges.push(Edge {
                        from: from.clone(),
                        to: id(back.goto),
                        label: Some(format!("on {}", back.event.event)),
                        dashed: true,
                    });
                }
            }
        }
        Diagram { nodes, edges }
    }
}

/// `step_<id>` when the step id is a plain identifier, else by position.
fn node_id(index: usize, step_id: &str) -> String {
    if !step_id.is_empty()
        && step_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        format!("step_{step_id}")
    } else {
        format!("step{index}")
    }
}

fn trigger_lines(trigger: &Trigger) -> Vec<String> {
    let mut lines = vec!["start".to_owned()];
    match trigger {
        Trigger::Event { event, key } => {
            lines.push(format!("event {}", event.event));
            if let Some(condition) = &event.condition {
                lines.push(format!("where {}", condition.source()));
            }
            if let Some(key) = key {
                lines.push(format!("per {key}"));
            }
        }
        Trigger::Segment { segment } => lines.push(format!("segment {segment}")),
        Trigger::Schedule {
            cron,
            timezone,
            audience,
            ..
        } => {
            lines.push(format!("schedule {cron} ({timezone})"));
            lines.push(match audience {
                Audience::Segment(s) => format!("audience {s}"),
                Audience::Where(e) => format!("where {}", e.source()),
            });
        }
        Trigger::Api => lines.push("api".to_owned()),
    }
    lines
}

/// The kind and key detail of a step, as one line.
fn detail(kind: &StepKind) -> String {
    match kind {
        StepKind::Send(send) => {
            let channel = match &send.channel {
                ChannelChoice::Preferred => "preferred",
                ChannelChoice::Named(c) => c,
            };
            let mut line = format!("send {channel}: {}", send.template);
            if !send.fallback.is_empty() {
                let _ = write!(line, ", fallback {}", send.fallback.join(", "));
            }
            line
        }
        StepKind::Wait(d) => format!("wait {}", format_duration(*d)),
        StepKind::WaitUntil { time, timezone } => {
            let mut line = format!("until {}", time.format("%H:%M"));
            if let Some(tz) = timezone {
                let _ = write!(line, " {tz}");
            }
            line
        }
        StepKind::WaitFor { event, .. } => format!("wait_for {}", event.event),
        StepKind::Branch { .. } => "branch".to_owned(),
        StepKind::Split { .. } => "split".to_owned(),
        StepKind::Update { traits } => {
            let names: Vec<&str> = traits.iter().map(|(k, _)| k.as_str()).collect();
            format!("update {}", names.join(", "))
        }
        StepKind::Exit { outcome } => format!("exit {outcome}"),
    }
}

/// A duration as a marketer would write it: weeks only when whole (`2w`, but `10d`).
fn format_duration(d: chrono::TimeDelta) -> String {
    const WEEK: i64 = 7 * 24 * 3600;
    let secs = d.num_seconds();
    if secs > 0 && secs % WEEK == 0 {
        return format!("{}w", secs / WEEK);
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= size {
            let _ = write!(out, "{}{unit}", rest / size);
            rest %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Escapes text for a quoted Mermaid label: quotes and angle brackets as entity codes
/// (Mermaid would read them as the label's end or as HTML).
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for a quoted DOT string.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_each_format() {
        assert_eq!(
            mermaid_escape(r#"if in_segment("vip") && x > 1"#),
            "if in_segment(#quot;vip#quot;) && x #gt; 1"
        );
        assert_eq!(dot_escape(r#"a "b" \ c"#), r#"a \"b\" \\ c"#);
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(format_duration(chrono::TimeDelta::days(10)), "10d");
        assert_eq!(format_duration(chrono::TimeDelta::days(14)), "2w");
        assert_eq!(format_duration(chrono::TimeDelta::hours(36)), "1d12h");
    }

    #[test]
    fn node_ids_are_safe() {
        assert_eq!(node_id(0, "end"), "step_end");
        assert_eq!(node_id(3, "send-now"), "step3");
    }
}
