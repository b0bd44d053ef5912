//! The host twin of the `route_tokens` kernel: the router's top-k and softmax per token (the
//! CPU's `router_top_k`), then the slots grouped by expert, stable in slot order, each
//! expert's rows padded to whole n-tiles of 8, and the matmul work items. The device check
//! compares the kernel with this, field by field.

use gptoss_kernels::scalar::router_top_k;

#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// `[T·k]` chosen experts, best first.
    pub experts: Vec<i32>,
    /// `[T·k]` softmax weights over the chosen.
    pub gates: Vec<f32>,
    /// `[T·k]` grouped row of each slot.
    pub prow: Vec<i32>,
    /// `[rows]` token of each grouped row; -1 for padding.
    pub row_src: Vec<i32>,
    /// (expert, first n-tile, n-tiles) work items of the expert matmuls.
    pub items: Vec<[i32; 3]>,
}

/// Grouped rows at most, for `slots` (token, expert) pairs over `experts` experts.
pub fn max_rows(slots: usize, experts: usize) -> usize {
    slots + 7 * experts.min(slots)
}

/// Work items at most (items of at least one n-tile each).
pub fn max_items(slots: usize, experts: usize) -> usize {
    max_rows(slots, experts) / 8 + experts.min(slots) + 1
}

pub fn route(logits: &[f32], experts: usize, k: usize, item_ntiles: usize) -> Routing {
    assert!(experts > 0 && logits.len().is_multiple_of(experts));
    let t = logits.len() / experts;
    let n = t * k;
    let mut ex = vec![0usize; n];
    let mut gates = vec![0f32; n];
    for ((row, e), g) in logits.chunks_exact(experts).zip(ex.chunks_exact_mut(k)).zip(gates.chunks_exact_mut(k)) {
        router_top_k(row, e, g);
    }
    let mut count = vec![0usize; experts];
    for &e in &ex {
        count[e] += 1;
    }
    let mut base = vec![0usize; experts];
    let mut items = Vec::new();
    let mut rows = 0;
    for e in 0..experts {
        base[e] = rows;
        let tiles = count[e].div_ceil(8);
        let mut c = 0;
        while c < tiles {
            items.push([e as i32, (rows / 8 + c) as i32, item_ntiles.min(tiles - c) as i32]);
            c += item_ntiles;
        }
        rows += tiles * 8;
    }
    let mut prow = vec![0i32; n];
    let mut row_src = vec![-1i32; rows];
    for (s, &e) in ex.iter().enumerate() {
        prow[s] = base[e] as i32;
        row_src[base[e]] = (s / k) as i32;
        base[e] += 1;
    }
    Routing { experts: ex.iter().map(|&e| e as i32).collect(), gates, prow, row_src, items }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_group_by_expert_in_slot_order_with_padding() {
        // 3 tokens, 4 experts, k = 2.
        let logits = [
            1.0, 3.0, 2.0, 0.0, // token 0: experts 1, 2
            5.0, 0.0, 4.0, 0.0, // token 1: experts 0, 2
            0.0, 2.0, 0.0, 9.0, // token 2: experts 3, 1
        ];
        let r = route(&logits, 4, 2, 8);
        assert_eq!(r.experts, [1, 2, 0, 2, 3, 1]);
        // Expert 0: rows 0..8 (slot 2); expert 1: 8..16 (slots 0, 5); expert 2: 16..24
        // (slots 1, 3); expert 3: 24..32 (slot 4).
        assert_eq!(r.prow, [8, 16, 0, 17, 24, 9]);
        assert_eq!(r.row_src.len(), 32);
        assert_eq!(&r.row_src[8..11], [0, 2, -1]);
        assert_eq!(r.items, [[0, 0, 1], [1, 1, 1], [2, 2, 1], [3, 3, 1]]);
        let g = &r.gates[0..2];
        assert!((g[0] + g[1] - 1.0).abs() < 1e-6 && g[0] > g[1]);
    }

    #[test]
    fn long_runs_are_cut_into_items_and_bounds_hold() {
        let e = 4;
        let t = 100;
        // Every token picks experts 0 and 1.
        let logits: Vec<f32> = (0..t).flat_map(|_| [2.0, 1.0, 0.0, -1.0]).collect();
        let r = route(&logits, e, 2, 2);
        // 100 rows -> 13 n-tiles per expert, items of 2: 7 each.
        assert_eq!(r.items.len(), 14);
        assert_eq!(r.items[6], [0, 12, 1]);
        assert!(r.row_src.len() <= max_rows(t * 2, e));
        for ntiles in [1, 2, 8] {
            assert!(route(&logits, e, 2, ntiles).items.len() <= max_items(t * 2, e));
        }
    }
}
