//! The step dependency graph: topological order and cycle detection.
//!
//! Edges run `parent -> child` (a child lists its parent in `depends_on`), as in the DESIGN
//! vocabulary. Self-dependencies and unknown names are left out of the graph: validation
//! reports them as their own problems.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::model::StepTemplate;

#[cfg(test)]
mod tests;

/// The dependency graph of `steps`; node weights are indices into `steps`, and node `i`
/// is step `i`.
fn dependency_graph(steps: &[StepTemplate]) -> DiGraph<usize, ()> {
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        index_of.entry(step.name.as_str()).or_insert(i);
    }
    let mut graph = DiGraph::with_capacity(steps.len(), 0);
    for i in 0..steps.len() {
        graph.add_node(i);
    }
    for (child, step) in steps.iter().enumerate() {
        let mut seen = Vec::new();
        for dep in &step.depends_on {
            let Some(&parent) = index_of.get(dep.as_str()) else {
                continue;
            };
            if parent == child || seen.contains(&parent) {
                continue;
            }
            seen.push(parent);
            graph.add_edge(NodeIndex::new(parent), NodeIndex::new(child), ());
        }
    }
    graph
}

/// Kahn's algorithm, lowest ready index first. Steps on or behind a cycle are left out.
pub(crate) fn topological_order(steps: &[StepTemplate]) -> Vec<usize> {
    let graph = dependency_graph(steps);
    let mut unfinished_parents: Vec<usize> = graph
        .node_indices()
        .map(|node| {
            graph
                .neighbors_directed(node, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = unfinished_parents
        .iter()
        .enumerate()
        .filter(|(_, &count)| count == 0)
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for child in graph.neighbors(NodeIndex::new(i)) {
            let count = &mut unfinished_parents[child.index()];
            *count -= 1;
            if *count == 0 {
                ready.push(Reverse(child.index()));
            }
        }
    }
    order
}

/// One cycle per non-trivial strongly connected component, as step indices with the first
/// index repeated at the end. Each cycle starts at the lowest index of its component and is a
/// shortest cycle through that step; cycles are sorted by their starting index.
pub(crate) fn find_cycles(steps: &[StepTemplate]) -> Vec<Vec<usize>> {
    let graph = dependency_graph(steps);
    let mut cycles: Vec<Vec<usize>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .filter_map(|component| cycle_in_component(&graph, &component))
        .collect();
    cycles.sort_by_key(|cycle| cycle.first().copied());
    cycles
}

/// Breadth-first search from the component's lowest node, staying inside the component, to
/// the first node with an edge back to the start.
fn cycle_in_component(graph: &DiGraph<usize, ()>, component: &[NodeIndex]) -> Option<Vec<usize>> {
    let start = *component.iter().min()?;
    let mut in_component = vec![false; graph.node_count()];
    for node in component {
        in_component[node.index()] = true;
    }
    let mut previous: Vec<Option<NodeIndex>> = vec![None; graph.node_count()];
    let mut visited = vec![false; graph.node_count()];
    visited[start.index()] = true;
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        if graph.contains_edge(node, start) {
            // Walk back from `node` to `start`, then turn the walk around.
            let mut back = Vec::new();
            let mut cursor = Some(node);
            while let Some(current) = cursor.filter(|&current| current != start) {
                back.push(current.index());
                cursor = previous[current.index()];
            }
            let mut path = Vec::with_capacity(back.len() + 2);
            path.push(start.index());
            path.extend(back.into_iter().rev());
            path.push(start.index());
            return Some(path);
        }
        for next in graph.neighbors(node) {
            if in_component[next.index()] && !visited[next.index()] {
                visited[next.index()] = true;
                previous[next.index()] = Some(node);
                queue.push_back(next);
            }
        }
    }
    None
}
