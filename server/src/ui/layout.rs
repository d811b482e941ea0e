//! Where a run's DAG is drawn: a layered layout computed on the server (pure: nodes and
//! edges in, boxes and curves out), so the page needs no layout script. Layers are the
//! longest path from a source; the order inside a layer comes from a few barycentre sweeps,
//! which untangle most crossings of the DAGs data teams write (tens to a few hundred jobs).

/// A node's box, in SVG user units.
pub const NODE_WIDTH: u32 = 190;
pub const NODE_HEIGHT: u32 = 46;
const GAP_X: u32 = 70;
const GAP_Y: u32 = 22;
const MARGIN: u32 = 12;
/// Barycentre passes (down and up each count one).
const SWEEPS: usize = 8;
/// Most nodes one drawing holds; the rest of a bigger workflow is listed, not drawn.
pub const NODES_MAX: usize = 1_000;

/// A node placed: the top-left corner of its box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub x: u32,
    pub y: u32,
    pub layer: usize,
}

/// The drawing: a box per node (in the input's order), an SVG path per edge, the size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nodes: Vec<Placed>,
    /// `(from, to, path d)`.
    pub edges: Vec<(usize, usize, String)>,
    pub width: u32,
    pub height: u32,
}

/// Lays out `count` nodes, given in an order where every edge `(from, to)` has
/// `from < to` (a topological order; edges that break it are dropped, never looped on).
pub fn layout(count: usize, edges: &[(usize, usize)]) -> Layout {
    let edges: Vec<(usize, usize)> = edges.iter().copied().filter(|&(from, to)| from < to && to < count).collect();
    let mut predecessors = vec![Vec::new(); count];
    let mut successors = vec![Vec::new(); count];
    for &(from, to) in &edges {
        predecessors[to].push(from);
        successors[from].push(to);
    }
    let mut layer = vec![0usize; count];
    for node in 0..count {
        layer[node] = predecessors[node].iter().map(|&p| layer[p] + 1).max().unwrap_or(0);
    }
    let layers = layer.iter().max().map_or(0, |deepest| deepest + 1);
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); layers];
    for node in 0..count {
        rows[layer[node]].push(node);
    }
    let mut position = vec![0f64; count];
    let place = |rows: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for row in rows {
            for (index, &node) in row.iter().enumerate() {
                position[node] = index as f64;
            }
        }
    };
    place(&rows, &mut position);
    for sweep in 0..SWEEPS {
        let down = sweep % 2 == 0;
        let order: Vec<usize> =
            if down { (1..layers).collect() } else { (0..layers.saturating_sub(1)).rev().collect() };
        for at in order {
            let neighbours = if down { &predecessors } else { &successors };
            let mut keyed: Vec<(f64, usize)> = rows[at]
                .iter()
                .map(|&node| {
                    let around = &neighbours[node];
                    let key = if around.is_empty() {
                        position[node]
                    } else {
                        around.iter().map(|&n| position[n]).sum::<f64>() / around.len() as f64
                    };
                    (key, node)
                })
                .collect();
            // Stable on ties (the node's index), so the same input always draws the same.
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[at] = keyed.into_iter().map(|(_, node)| node).collect();
            for (index, &node) in rows[at].iter().enumerate() {
                position[node] = index as f64;
            }
        }
    }
    let tallest = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let column = NODE_HEIGHT + GAP_Y;
    let mut nodes = vec![Placed { x: 0, y: 0, layer: 0 }; count];
    for (at, row) in rows.iter().enumerate() {
        // Short layers are centred against the tallest.
        let offset = (tallest - row.len() as u32) * column / 2;
        for (index, &node) in row.iter().enumerate() {
            nodes[node] = Placed {
                x: MARGIN + at as u32 * (NODE_WIDTH + GAP_X),
                y: MARGIN + offset + index as u32 * column,
                layer: at,
            };
        }
    }
    let edges = edges
        .into_iter()
        .map(|(from, to)| {
            let (a, b) = (nodes[from], nodes[to]);
            let (x1, y1) = (a.x + NODE_WIDTH, a.y + NODE_HEIGHT / 2);
            let (x2, y2) = (b.x, b.y + NODE_HEIGHT / 2);
            let middle = (x1 + x2) / 2;
            (from, to, format!("M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}"))
        })
        .collect();
    let width = if layers == 0 { 0 } else { 2 * MARGIN + layers as u32 * (NODE_WIDTH + GAP_X) - GAP_X };
    let height = if tallest == 0 { 0 } else { 2 * MARGIN + tallest * column - GAP_Y };
    Layout { nodes, edges, width, height }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(a: Placed, b: Placed) -> bool {
        a.x < b.x + NODE_WIDTH && b.x < a.x + NODE_WIDTH && a.y < b.y + NODE_HEIGHT && b.y < a.y + NODE_HEIGHT
    }

    #[test]
    fn a_diamond_is_three_layers_with_the_middle_pair_stacked() {
        // extract → (clean, enrich) → load
        let drawn = layout(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        let layers: Vec<usize> = drawn.nodes.iter().map(|node| node.layer).collect();
        assert_eq!(layers, vec![0, 1, 1, 2]);
        assert_eq!(drawn.nodes[1].x, drawn.nodes[2].x);
        assert_ne!(drawn.nodes[1].y, drawn.nodes[2].y);
        // The single nodes sit level with the middle of the pair.
        assert_eq!(drawn.nodes[0].y * 2, drawn.nodes[1].y + drawn.nodes[2].y);
        assert_eq!(drawn.edges.len(), 4);
        assert!(
            drawn.nodes.iter().all(|node| node.x + NODE_WIDTH <= drawn.width && node.y + NODE_HEIGHT <= drawn.height)
        );
    }

    #[test]
    fn every_edge_goes_right_and_no_boxes_overlap_in_a_wide_random_dag() {
        // A deterministic pseudo-random DAG of 200 nodes (a seeded LCG, printed on failure).
        let seed = 0x5EED_u64;
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut edges = Vec::new();
        for to in 1..200 {
            for _ in 0..(next() % 3) {
                edges.push((next() % to, to));
            }
        }
        let drawn = layout(200, &edges);
        for &(from, to, _) in &drawn.edges {
            assert!(drawn.nodes[from].layer < drawn.nodes[to].layer, "seed {seed}: edge {from}->{to}");
        }
        for a in 0..200 {
            for b in a + 1..200 {
                assert!(!overlaps(drawn.nodes[a], drawn.nodes[b]), "seed {seed}: {a} and {b} overlap");
            }
        }
        assert_eq!(drawn, layout(200, &edges), "the same input draws the same");
    }

    #[test]
    fn edges_backwards_or_out_of_range_are_dropped_and_an_empty_dag_draws_nothing() {
        let drawn = layout(2, &[(1, 0), (0, 5)]);
        assert!(drawn.edges.is_empty());
        assert_eq!(drawn.nodes[0].layer, 0);
        assert_eq!(drawn.nodes[1].layer, 0);
        let empty = layout(0, &[]);
        assert_eq!((empty.width, empty.height), (0, 0));
    }

    #[test]
    fn crossings_are_untangled_by_the_sweeps() {
        // a → d, b → c written so that input order crosses: layer 1 is (c, d) but d's
        // parent comes first.
        let drawn = layout(4, &[(0, 3), (1, 2)]);
        assert!(drawn.nodes[3].y < drawn.nodes[2].y, "d sits beside a, c beside b");
    }
}
