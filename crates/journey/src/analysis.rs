//! Whole-journey checks over the step graph: loops that never wait, steps nothing leads to.

use crate::diagnostics::codes;
use crate::journey_file::Edge;
use crate::model::{Journey, StepIdx};
use crate::parse::Report;
use crate::yaml::Key;

/// Reports each cycle of steps that never waits.
///
/// Steps without a wait run one after another at the same instant, so such a cycle would
/// spin forever. Only transitions out of non-waiting steps can close one: a `wait` or
/// `wait_for` anywhere in a loop breaks it. (A `send` deferred by quiet hours does not
/// count: it waits only sometimes.) Each strongly connected group of steps is reported
/// once, at the transition that closes the cycle.
pub(crate) fn report_instant_cycles(
    r: &mut Report<'_>,
    steps: &[&Key],
    waits: &[bool],
    edges: &[Edge],
) {
    let n = steps.len();
    let mut adjacency: Vec<Vec<&Edge>> = vec![Vec::new(); n];
    for edge in edges {
        if edge.from < n && edge.to < n && !waits[edge.from] {
            adjacency[edge.from].push(edge);
        }
    }
    for component in strongly_connected(&adjacency) {
        let Some(&first) = component.iter().min() else {
            continue;
        };
        let Some(path) = shortest_cycle(&adjacency, &component, first) else {
            continue;
        };
        let names: Vec<String> = path
            .iter()
            .map(|e| format!("`{}`", steps[e.from].name))
            .chain(std::iter::once(format!("`{}`", steps[first].name)))
            .collect();
        let closing = path.last().expect("a cycle has at least one transition");
        r.error_at(
            closing.pos,
            closing.len,
            codes::INSTANT_CYCLE,
            format!(
                "instant cycle: {} never waits, so it would repeat forever at the same instant; add a `wait` or `wait_for` step to it",
                names.join(" -> ")
            ),
        );
    }
}

/// The transitions of a shortest cycle through `start` inside `component`.
pub(crate) fn shortest_cycle<'e>(
    adjacency: &[Vec<&'e Edge>],
    component: &[usize],
    start: usize,
) -> Option<Vec<&'e Edge>> {
    let mut came_by: Vec<Option<&Edge>> = vec![None; adjacency.len()];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for edge in &adjacency[at] {
            if !component.contains(&edge.to) {
                continue;
            }
            if edge.to == start {
                let mut path = vec![*edge];
                let mut node = at;
                while node != start {
                    let e = came_by[node].expect("every visited step was reached by an edge");
                    path.push(e);
                    node = e.from;
                }
                path.reverse();
                return Some(path);
            }
            if came_by[edge.to].is_none() {
                came_by[edge.to] = Some(edge);
                queue.push_back(edge.to);
            }
        }
    }
    None
}

/// Tarjan's algorithm; returns the components that contain a cycle (more than one step,
/// or one step that leads to itself).
pub(crate) fn strongly_connected(adjacency: &[Vec<&Edge>]) -> Vec<Vec<usize>> {
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adjacency: &[Vec<&Edge>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for edge in &adjacency[v] {
            let w = edge.to;
            match s.index[w] {
                None => {
                    visit(w, adjacency, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            let cyclic = component.len() > 1 || adjacency[v].iter().any(|e| e.to == v);
            if cyclic {
                s.out.push(component);
            }
        }
    }
    let n = adjacency.len();
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, adjacency, &mut s);
        }
    }
    s.out
}

/// Warns about steps that no path from `start` leads to: usually a forgotten `next`.
pub(crate) fn report_unreachable_steps(
    r: &mut Report<'_>,
    journey: &Journey,
    steps: &[&Key],
    edges: &[Edge],
) {
    let n = journey.steps.len();
    let mut reached = vec![false; n];
    let mut queue = vec![journey.start.0];
    reached[journey.start.0] = true;
    loop {
        while let Some(at) = queue.pop() {
            for edge in edges.iter().filter(|e| e.from == at) {
                if !reached[edge.to] {
                    reached[edge.to] = true;
                    queue.push(edge.to);
                }
            }
        }
        // An `on` transition is a way in once a step it applies to is reached.
        for back in &journey.on {
            let applies = (0..n).any(|i| reached[i] && back.applies_at(StepIdx(i)));
            if applies && !reached[back.goto.0] {
                reached[back.goto.0] = true;
                queue.push(back.goto.0);
            }
        }
        if queue.is_empty() {
            break;
        }
    }
    for (i, key) in steps.iter().enumerate() {
        if !reached[i] {
            r.warning_at(
                key.pos,
                key.len,
                codes::UNREACHABLE_STEP,
                format!(
                    "step `{}` is unreachable: no path from the start step `{}` leads to it",
                    key.name, journey.steps[journey.start.0].id
                ),
            );
        }
    }
}
