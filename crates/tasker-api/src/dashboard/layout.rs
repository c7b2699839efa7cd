//! The layered drawing of a DAG: where each node of a task's or template's graph goes.
//!
//! Layers come from the longest path (a node sits one layer below its lowest parent), so every
//! edge points down. Within a layer, nodes are ordered by barycentre: alternating sweeps down
//! and up put each node near the mean position of its neighbours in the layer before, which
//! takes out most edge crossings. A layer wider than `max_per_row` wraps onto several rows,
//! so a thousand-step fan-out stays a block rather than a line a hundred screens wide. The
//! coordinates are plain numbers: the page draws them as SVG and the tests check them.
//!
//! Hand-written rather than a graph-drawing crate: the algorithm is the textbook Sugiyama
//! layering reduced to the two steps the dashboard needs, about a hundred lines, and the
//! crates that do it either pull in a renderer or lay out undirected graphs.

/// A node's box, in SVG user units.
pub const NODE_WIDTH: f64 = 176.0;
/// A node's box, in SVG user units.
pub const NODE_HEIGHT: f64 = 48.0;
/// Space between two nodes of a row.
const H_GAP: f64 = 24.0;
/// Space between two rows.
const V_GAP: f64 = 56.0;
/// Space around the drawing.
pub const MARGIN: f64 = 16.0;
/// Barycentre sweeps (each one down and one up); more changes little on real workflows.
const SWEEPS: usize = 4;

/// Where one node goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    /// Its layer: 0 for a node without parents, else one more than its deepest parent's.
    pub layer: usize,
    /// Its position in the layer, left to right.
    pub order: usize,
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
}

/// The line of one edge: from the parent's bottom centre, down through the slots its dummy
/// nodes hold in the layers it crosses, to the child's top centre.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The parent's index.
    pub from: usize,
    /// The child's index.
    pub to: usize,
    /// The points to draw through, top to bottom.
    pub points: Vec<(f64, f64)>,
}

/// A whole drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// One per node, in the caller's node order.
    pub nodes: Vec<Placed>,
    /// One per edge that names two different nodes in range, in the caller's order.
    pub edges: Vec<Route>,
    /// Width of the drawing, margins included.
    pub width: f64,
    /// Height of the drawing, margins included.
    pub height: f64,
}

/// Lays out `n` nodes with `edges` as `(parent, child)` indices. Edges naming a node out of
/// range are ignored. An edge that crosses layers gets a dummy node in each layer between, so
/// it is ordered with the nodes and drawn around them rather than through them. A cycle (no
/// template has one: registration refuses it) does not loop: its nodes go on a layer after
/// the others.
pub fn layered(n: usize, edges: &[(usize, usize)], max_per_row: usize) -> Layout {
    let max_per_row = max_per_row.max(1);
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(p, c)| p < n && c < n && p != c)
        .collect();
    let mut parents = vec![Vec::new(); n];
    let mut children = vec![Vec::new(); n];
    for &(p, c) in &edges {
        parents[c].push(p);
        children[p].push(c);
    }
    let mut layer_of = longest_path_layers(n, &parents, &children);

    // Each edge as a chain of nodes, dummies appended after the real ones.
    let mut chains: Vec<Vec<usize>> = Vec::with_capacity(edges.len());
    let (mut up, mut down) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    for &(p, c) in &edges {
        let mut chain = vec![p];
        for layer in layer_of[p] + 1..layer_of[c] {
            let dummy = layer_of.len();
            layer_of.push(layer);
            up.push(Vec::new());
            down.push(Vec::new());
            chain.push(dummy);
        }
        chain.push(c);
        for pair in chain.windows(2) {
            down[pair[0]].push(pair[1]);
            up[pair[1]].push(pair[0]);
        }
        chains.push(chain);
    }
    let total = layer_of.len();
    let depth = layer_of.iter().map(|l| l + 1).max().unwrap_or(0);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (node, &layer) in layer_of.iter().enumerate() {
        layers[layer].push(node);
    }
    order_by_barycentre(&mut layers, &up, &down, total);

    let pitch_x = NODE_WIDTH + H_GAP;
    let pitch_y = NODE_HEIGHT + V_GAP;
    let widest = layers
        .iter()
        .map(|l| l.len().min(max_per_row))
        .max()
        .unwrap_or(0);
    let width = if widest == 0 {
        2.0 * MARGIN
    } else {
        widest as f64 * pitch_x - H_GAP + 2.0 * MARGIN
    };
    let mut placed = vec![
        Placed {
            layer: 0,
            order: 0,
            x: 0.0,
            y: 0.0
        };
        total
    ];
    let mut row = 0usize;
    for (layer, members) in layers.iter().enumerate() {
        for (chunk_index, chunk) in members.chunks(max_per_row).enumerate() {
            let row_width = chunk.len() as f64 * pitch_x - H_GAP;
            let left = MARGIN + (width - 2.0 * MARGIN - row_width) / 2.0;
            for (i, &node) in chunk.iter().enumerate() {
                placed[node] = Placed {
                    layer,
                    order: chunk_index * max_per_row + i,
                    x: left + i as f64 * pitch_x,
                    y: MARGIN + row as f64 * pitch_y,
                };
            }
            row += 1;
        }
    }
    let height = if row == 0 {
        2.0 * MARGIN
    } else {
        row as f64 * pitch_y - V_GAP + 2.0 * MARGIN
    };
    let centre = |p: &Placed| p.x + NODE_WIDTH / 2.0;
    let routes = edges
        .iter()
        .zip(&chains)
        .map(|(&(from, to), chain)| {
            let mut points = vec![(centre(&placed[from]), placed[from].y + NODE_HEIGHT)];
            for &dummy in &chain[1..chain.len() - 1] {
                let at = &placed[dummy];
                points.push((centre(at), at.y));
                points.push((centre(at), at.y + NODE_HEIGHT));
            }
            points.push((centre(&placed[to]), placed[to].y));
            Route { from, to, points }
        })
        .collect();
    placed.truncate(n);
    Layout {
        nodes: placed,
        edges: routes,
        width,
        height,
    }
}

/// Kahn's algorithm, each node one layer below its deepest parent. Nodes left over (on a
/// cycle) go one layer below everything else.
fn longest_path_layers(n: usize, parents: &[Vec<usize>], children: &[Vec<usize>]) -> Vec<usize> {
    let mut waiting: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut layer = vec![0usize; n];
    let mut placed = vec![false; n];
    let mut ready: std::collections::VecDeque<usize> =
        (0..n).filter(|&v| waiting[v] == 0).collect();
    while let Some(v) = ready.pop_front() {
        placed[v] = true;
        for &c in &children[v] {
            layer[c] = layer[c].max(layer[v] + 1);
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.push_back(c);
            }
        }
    }
    let after = layer.iter().copied().max().map_or(0, |m| m + 1);
    for v in 0..n {
        if !placed[v] {
            layer[v] = after;
        }
    }
    layer
}

/// Reorders each layer by the mean position of each node's neighbours in the layer before
/// (parents going down, children going up); a node without such neighbours keeps its place.
/// The sort is stable, so ties keep the caller's order and the result is deterministic.
fn order_by_barycentre(
    layers: &mut [Vec<usize>],
    parents: &[Vec<usize>],
    children: &[Vec<usize>],
    n: usize,
) {
    let mut position = vec![0.0f64; n];
    let record = |layers: &[Vec<usize>], position: &mut Vec<f64>| {
        for layer in layers {
            for (i, &v) in layer.iter().enumerate() {
                position[v] = i as f64;
            }
        }
    };
    record(layers, &mut position);
    let reorder = |layer: &mut Vec<usize>, neighbours: &[Vec<usize>], position: &mut Vec<f64>| {
        let keys: Vec<(usize, f64)> = layer
            .iter()
            .map(|&v| {
                let around = &neighbours[v];
                let key = if around.is_empty() {
                    position[v]
                } else {
                    around.iter().map(|&u| position[u]).sum::<f64>() / around.len() as f64
                };
                (v, key)
            })
            .collect();
        let mut sorted = keys;
        sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
        *layer = sorted.into_iter().map(|(v, _)| v).collect();
        for (i, &v) in layer.iter().enumerate() {
            position[v] = i as f64;
        }
    };
    for _ in 0..SWEEPS {
        for layer in layers.iter_mut().skip(1) {
            reorder(layer, parents, &mut position);
        }
        for layer in layers.iter_mut().rev().skip(1) {
            reorder(layer, children, &mut position);
        }
    }
}

/// Edge crossings between consecutive layers, for tests and for judging an order.
#[cfg(test)]
fn crossings(layout: &Layout, edges: &[(usize, usize)]) -> usize {
    let mut count = 0;
    for (i, &(a, b)) in edges.iter().enumerate() {
        for &(c, d) in &edges[i + 1..] {
            let (pa, pb, pc, pd) = (
                layout.nodes[a],
                layout.nodes[b],
                layout.nodes[c],
                layout.nodes[d],
            );
            let same_span =
                pa.layer == pc.layer && pb.layer == pd.layer && pb.layer == pa.layer + 1;
            if same_span && a != c && b != d && (pa.x - pc.x) * (pb.x - pd.x) < 0.0 {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn overlap(a: &Placed, b: &Placed) -> bool {
        a.x < b.x + NODE_WIDTH
            && b.x < a.x + NODE_WIDTH
            && a.y < b.y + NODE_HEIGHT
            && b.y < a.y + NODE_HEIGHT
    }

    /// A random DAG: edges only from a lower to a higher index.
    fn dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, usize)> {
        (1usize..40, 1usize..12).prop_flat_map(|(n, per_row)| {
            let edges = proptest::collection::vec((0..n, 0..n), 0..(n * 2)).prop_map(|pairs| {
                pairs
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (a.min(b), a.max(b)))
                    .collect::<Vec<_>>()
            });
            (Just(n), edges, Just(per_row))
        })
    }

    proptest! {
        #[test]
        fn no_two_nodes_overlap_and_every_edge_points_down((n, edges, per_row) in dag()) {
            let layout = layered(n, &edges, per_row);
            prop_assert_eq!(layout.nodes.len(), n);
            for (i, a) in layout.nodes.iter().enumerate() {
                prop_assert!(a.x >= 0.0 && a.y >= 0.0);
                prop_assert!(a.x + NODE_WIDTH <= layout.width + 1e-9);
                prop_assert!(a.y + NODE_HEIGHT <= layout.height + 1e-9);
                for b in &layout.nodes[i + 1..] {
                    prop_assert!(!overlap(a, b), "{:?} overlaps {:?}", a, b);
                }
            }
            for &(p, c) in &edges {
                let (parent, child) = (layout.nodes[p], layout.nodes[c]);
                prop_assert!(child.layer > parent.layer, "edge {}->{} does not go down a layer", p, c);
                prop_assert!(child.y >= parent.y + NODE_HEIGHT, "edge {}->{} is not drawn downwards", p, c);
            }
            let drawn: Vec<(usize, usize)> = edges.iter().copied().filter(|(a, b)| a != b).collect();
            prop_assert_eq!(layout.edges.len(), drawn.len());
            for route in &layout.edges {
                prop_assert!(
                    route.points.windows(2).all(|w| w[1].1 >= w[0].1),
                    "route {:?} goes up", route
                );
                // Crossing k layers, it passes through k - 1 dummy slots, two points each.
                let span = layout.nodes[route.to].layer - layout.nodes[route.from].layer;
                prop_assert_eq!(route.points.len(), 2 * span);
            }
        }

        #[test]
        fn layers_are_longest_paths((n, edges, per_row) in dag()) {
            let layout = layered(n, &edges, per_row);
            for v in 0..n {
                let parent_layers: Vec<usize> = edges
                    .iter()
                    .filter(|&&(_, c)| c == v)
                    .map(|&(p, _)| layout.nodes[p].layer)
                    .collect();
                let expected = parent_layers.iter().max().map_or(0, |l| l + 1);
                prop_assert_eq!(layout.nodes[v].layer, expected);
            }
        }
    }

    #[test]
    fn barycentre_untangles_a_crossed_pair() {
        // Roots 0 and 1; 2 hangs under 1 and 3 under 0. Listed in index order the two edges
        // cross; ordered by barycentre they do not.
        let edges = [(0, 3), (1, 2)];
        let layout = layered(4, &edges, 10);
        assert_eq!(crossings(&layout, &edges), 0);
        assert!(layout.nodes[3].x < layout.nodes[2].x);
    }

    #[test]
    fn a_long_edge_goes_around_the_node_in_its_way() {
        // a -> b -> c, and a -> c: the long edge passes beside b, not through it.
        let layout = layered(3, &[(0, 1), (1, 2), (0, 2)], 10);
        let long = layout
            .edges
            .iter()
            .find(|r| (r.from, r.to) == (0, 2))
            .unwrap();
        assert_eq!(long.points.len(), 4);
        let b = layout.nodes[1];
        let (x, _) = long.points[1];
        assert!(
            x < b.x || x > b.x + NODE_WIDTH,
            "the dummy slot is beside b: {long:?} {b:?}"
        );
    }

    #[test]
    fn a_diamond_is_three_layers_with_the_join_centred() {
        let layout = layered(4, &[(0, 1), (0, 2), (1, 3), (2, 3)], 10);
        let layers: Vec<usize> = layout.nodes.iter().map(|p| p.layer).collect();
        assert_eq!(layers, [0, 1, 1, 2]);
        assert!((layout.nodes[0].x - layout.nodes[3].x).abs() < 1e-9);
    }

    #[test]
    fn a_wide_layer_wraps_into_rows_and_a_thousand_nodes_lay_out() {
        let edges: Vec<(usize, usize)> = (1..1000).map(|c| (0, c)).collect();
        let layout = layered(1000, &edges, 25);
        let rows: std::collections::BTreeSet<u64> =
            layout.nodes.iter().map(|p| p.y.to_bits()).collect();
        assert_eq!(
            rows.len(),
            1 + 40,
            "the root, then 999 children in rows of 25"
        );
        assert!(layout.width < 25.0 * (NODE_WIDTH + H_GAP) + 2.0 * MARGIN);
    }

    #[test]
    fn empty_and_cyclic_graphs_do_not_fail() {
        assert_eq!(layered(0, &[], 5).nodes.len(), 0);
        let layout = layered(3, &[(0, 1), (1, 2), (2, 1)], 5);
        assert_eq!(layout.nodes[0].layer, 0);
        assert!(layout.nodes[1].layer > 0 && layout.nodes[2].layer > 0);
    }
}
