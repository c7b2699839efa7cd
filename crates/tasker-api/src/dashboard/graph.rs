//! A workflow's DAG as SVG: the nodes of a task (its steps, a mapped step's instances folded
//! into it) or of a template, placed by [`super::layout`].

use std::collections::HashMap;

use maud::{html, Markup};
use tasker_types::{StepId, StepRow, StepSpec, StepState};

use super::{
    layout::{self, NODE_HEIGHT, NODE_WIDTH},
    step_look,
};

/// Nodes per row before a layer wraps.
const PER_ROW: usize = 8;

/// One node to draw.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The step's name (also what a click asks the server for).
    pub name: String,
    /// Its state; `None` in a template.
    pub state: Option<StepState>,
    /// The second line: the state and attempts, or the handler in a template.
    pub detail: String,
    /// A decision step.
    pub decision: bool,
    /// A mapped step.
    pub mapped: bool,
}

/// A graph ready to draw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    /// `(parent, child)` indices into `nodes`.
    pub edges: Vec<(usize, usize)>,
}

/// How many of a mapped step's instances are in each state, in the state machine's order.
pub(crate) fn instance_counts<'a>(
    instances: impl Iterator<Item = &'a StepRow>,
) -> Vec<(StepState, usize)> {
    let mut counts: Vec<(StepState, usize)> = Vec::new();
    for s in instances {
        match counts.iter_mut().find(|(state, _)| *state == s.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((s.state, 1)),
        }
    }
    counts.sort_by_key(|(state, _)| StepState::ALL.iter().position(|s| s == state));
    counts
}

/// The instances of each mapped step among `steps`, in item order.
pub(crate) fn instances_by_map(steps: &[StepRow]) -> HashMap<StepId, Vec<&StepRow>> {
    let mut by_map: HashMap<StepId, Vec<&StepRow>> = HashMap::new();
    for s in steps {
        if let Some(instance) = &s.map_instance {
            by_map.entry(instance.of).or_default().push(s);
        }
    }
    for instances in by_map.values_mut() {
        instances.sort_by_key(|s| s.map_instance.as_ref().map(|m| m.index));
    }
    by_map
}

/// A task's graph: one node per step that is not a mapped step's instance; a mapped step's
/// node counts its instances by state.
pub(crate) fn of_task(steps: &[StepRow], edges: &[(StepId, StepId)]) -> Graph {
    let by_map = instances_by_map(steps);
    let mut index: HashMap<StepId, usize> = HashMap::new();
    let top: Vec<&StepRow> = steps.iter().filter(|s| s.map_instance.is_none()).collect();
    for (i, s) in top.iter().enumerate() {
        index.insert(s.id, i);
    }
    let nodes = top
        .iter()
        .map(|s| {
            let mapped = s.map.is_some();
            let detail = if mapped {
                let instances = by_map.get(&s.id).map_or(&[][..], Vec::as_slice);
                if instances.is_empty() {
                    s.state.as_str().to_owned()
                } else {
                    let counts = instance_counts(instances.iter().copied())
                        .iter()
                        .map(|(state, n)| format!("{}{n}", step_look(*state).0))
                        .collect::<Vec<_>>()
                        .join(" ");
                    format!("{counts} of {}", instances.len())
                }
            } else if s.attempts > 1 {
                format!("{} · attempt {}", s.state.as_str(), s.attempts)
            } else {
                s.state.as_str().to_owned()
            };
            Node {
                name: s.name.clone(),
                state: Some(s.state),
                detail,
                decision: s.branches.is_some(),
                mapped,
            }
        })
        .collect();
    let edges = edges
        .iter()
        .filter_map(|(p, c)| Some((*index.get(p)?, *index.get(c)?)))
        .collect();
    Graph { nodes, edges }
}

/// A template's graph: each step with its handler.
pub(crate) fn of_template(specs: &[StepSpec]) -> Graph {
    let index: HashMap<&str, usize> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let nodes = specs
        .iter()
        .map(|s| Node {
            name: s.name.clone(),
            state: None,
            detail: s.handler.clone(),
            decision: s.decision,
            mapped: s.map.is_some(),
        })
        .collect();
    let edges = specs
        .iter()
        .enumerate()
        .flat_map(|(c, s)| {
            s.depends_on
                .iter()
                .filter_map(|p| index.get(p.as_str()).map(|&p| (p, c)))
                .collect::<Vec<_>>()
        })
        .collect();
    Graph { nodes, edges }
}

/// Shortens `text` to `max` characters with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
        short.push('…');
        short
    }
}

/// An SVG path through `points`: a vertical-tangent curve between each pair, so a line
/// leaves a node downwards and enters the next from above.
fn path(points: &[(f64, f64)]) -> String {
    let mut d = String::new();
    for (i, &(x, y)) in points.iter().enumerate() {
        if i == 0 {
            d.push_str(&format!("M {x} {y}"));
        } else {
            let (px, py) = points[i - 1];
            let mid = (py + y) / 2.0;
            d.push_str(&format!(" C {px} {mid}, {x} {mid}, {x} {y}"));
        }
    }
    d
}

/// The SVG: edges first (under the nodes), then one focusable group per node carrying its
/// step's name; the state shows as a symbol and a word, and as a colour.
pub(crate) fn svg(graph: &Graph) -> Markup {
    let placed = layout::layered(graph.nodes.len(), &graph.edges, PER_ROW);
    let (w, h) = (placed.width, placed.height);
    html! {
        svg.dag xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {h}"))
            width=(w) height=(h) role="group" aria-label="Step graph" {
            defs {
                marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" {}
                }
            }
            g.edges {
                @for route in &placed.edges {
                    @let skipped = graph.nodes[route.to].state == Some(StepState::Skipped);
                    path class=(if skipped { "edge not-taken" } else { "edge" }) marker-end="url(#arrow)"
                        data-from=(graph.nodes[route.from].name) data-to=(graph.nodes[route.to].name)
                        d=(path(&route.points)) {}
                }
            }
            g.nodes {
                @for (node, at) in graph.nodes.iter().zip(&placed.nodes) {
                    @let (symbol, tone) = node.state.map_or(("", "template"), step_look);
                    @let state = node.state.map_or("", |s| s.as_str());
                    @let class = format!(
                        "node {tone}{}{}",
                        if node.decision { " decision" } else { "" },
                        if node.mapped { " mapped" } else { "" }
                    );
                    g class=(class)
                        data-step=(node.name) data-state=(state) tabindex="0" role="button"
                        transform=(format!("translate({} {})", at.x, at.y)) {
                        title { (node.name) @if !state.is_empty() { " — " (state) } }
                        rect width=(NODE_WIDTH) height=(NODE_HEIGHT) rx="6" {}
                        text.name x="10" y="19" {
                            @if node.decision { "◇ " }
                            @if node.mapped { "▦ " }
                            (clip(&node.name, 20))
                        }
                        text.detail x="10" y="37" {
                            @if !symbol.is_empty() { (symbol) " " }
                            (clip(&node.detail, 24))
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_graph_follows_depends_on_and_draws_every_step() {
        let yaml = "namespace: t\nname: g\nversion: 1.0.0\nsteps:\n\
            - {name: a, handler: noop}\n\
            - {name: b, handler: noop, depends_on: [a]}\n\
            - {name: c, handler: command, depends_on: [a, b]}\n";
        let template = tasker_template::TaskTemplate::from_yaml_str(yaml, "test").unwrap();
        let graph = of_template(&template.step_specs());
        assert_eq!(graph.nodes.len(), 3);
        let mut edges = graph.edges.clone();
        edges.sort_unstable();
        assert_eq!(edges, [(0, 1), (0, 2), (1, 2)]);
        let svg = svg(&graph).into_string();
        for name in ["data-step=\"a\"", "data-step=\"b\"", "data-step=\"c\""] {
            assert!(svg.contains(name), "{svg}");
        }
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 3, "{svg}");
    }

    #[test]
    fn clipping_keeps_short_names() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("a_rather_long_step_name", 10), "a_rather_…");
    }
}
