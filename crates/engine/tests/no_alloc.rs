//! The per-token hot path allocates nothing: once a [`Workspace`] has seen a batch shape,
//! decode steps and same-sized prompt chunks run without a single heap allocation on any
//! thread (the KV cache grows only when a sequence crosses into a new block).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::tiny;
use gptoss_engine::{KvCache, LogitsRequest, Model, SeqChunk, Workspace};
use gptoss_kernels::Kernels;

/// Counts allocations (on every thread) while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f`, on any thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

fn check(kernels: &'static Kernels) {
    let mut model = Model::load(&tiny("hf")).unwrap();
    model.set_kernels(kernels);
    let mut cache = KvCache::new(&model.config, 4096);
    let seq = cache.add_sequence();
    let mut ws = Workspace::new();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 1000).collect();
    let step = |ws: &mut Workspace, cache: &mut KvCache, tokens: &[u32]| -> u32 {
        let logits = model.forward_in(ws, cache, &[SeqChunk { seq, tokens, logits: LogitsRequest::Last }]).unwrap();
        let row = logits.last_for(0).unwrap();
        (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32
    };

    // Warm-up: one prompt chunk and a few steps size every buffer and thread's scratch.
    let mut next = step(&mut ws, &mut cache, &prompt);
    for _ in 0..4 {
        next = step(&mut ws, &mut cache, &[next]);
    }

    // A generation loop that runs on a pool thread allocates nothing at all.
    let (decode, chunk) = rayon::scope(|_| {
        let decode = allocations(|| {
            for _ in 0..16 {
                next = step(&mut ws, &mut cache, &[next]);
            }
        });
        let chunk = allocations(|| {
            step(&mut ws, &mut cache, &prompt);
        });
        (decode, chunk)
    });
    println!("{kernels:?}: {decode} allocations in 16 decode steps, {chunk} in a 20-token chunk");
    assert_eq!(decode, 0, "{kernels:?}: decode steps allocated");
    assert_eq!(chunk, 0, "{kernels:?}: a prompt chunk of a size seen before allocated");

    // From outside the pool each step is handed over once, and rayon's injection queue takes
    // a new 1.5 KB block every 63 hand-overs: at most one allocation in 32 steps.
    let outside = allocations(|| {
        for _ in 0..32 {
            next = step(&mut ws, &mut cache, &[next]);
        }
    });
    println!("{kernels:?}: {outside} allocations in 32 decode steps called from outside the pool");
    assert!(outside <= 1, "{kernels:?}: {outside} allocations in 32 steps from outside the pool");
}

#[test]
fn forward_in_allocates_nothing_once_warm() {
    check(Kernels::from_env().unwrap());
    check(Kernels::scalar());
}
