//! The process's allocator: mimalloc, entered through its plain `mi_malloc` family when the
//! alignment asked for is one every mimalloc block has anyway (a machine word).
//!
//! `mimalloc::MiMalloc` calls `mi_malloc_aligned` for every allocation, whose fast path covers
//! only small blocks: each allocation over 1 KiB took its generic path (callgrind: ~250
//! instructions each, 3k per short request). Larger alignments still go through it.
//!
//! Also each event loop's `upkeep`: mimalloc hands freed pages back to the system only from a
//! later allocation or free, so a loop gone quiet after a burst kept them resident.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::time::Duration;

use libmimalloc_sys as mi;

/// Every mimalloc block is aligned to at least a word: block sizes are multiples of it.
const WORD: usize = std::mem::size_of::<usize>();

pub struct Allocator;

// SAFETY: every method hands the layout's size (and, above a word, its alignment) to the
// mimalloc call that honours it, and frees with `mi_free`, which takes any mimalloc block.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; a null result is passed on as the trait allows.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the trait's contract), so from mimalloc.
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of this allocator with `layout` (the trait's contract).
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// How often each event loop looks whether it went quiet.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's event loop served a request since its last upkeep tick.
    static SERVED: Cell<bool> = const { Cell::new(false) };
}

/// Notes that this thread's event loop is serving requests: `upkeep` leaves the allocator be.
pub fn note_request() {
    SERVED.with(|served| served.set(true));
}

/// Runs on each event loop, for ever. Once a loop has served nothing for a tick, the pages
/// freed on its thread go back to the system, once. mimalloc purges freed pages only from a
/// later allocation or free, so without this a burst of 1,000 connections opened at once, then
/// idle, kept about 20 KiB each of freed request state resident (bench e-idle: 22.3 KiB per
/// connection, 1.6 with it). A busy loop is not interrupted: its allocations purge as usual.
pub async fn upkeep() {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut quiet = Quiet::default();
    loop {
        tick.tick().await;
        if quiet.collect_now(SERVED.with(|served| served.replace(false))) {
            // SAFETY: takes no pointers; mimalloc allows it at any time on any thread.
            #[allow(unsafe_code)]
            unsafe {
                mi::mi_collect(true)
            };
        }
    }
}

/// When `upkeep` collects: at the first tick without requests after one with some.
#[derive(Debug, Default)]
struct Quiet {
    busy_since_collect: bool,
}

impl Quiet {
    fn collect_now(&mut self, served_this_tick: bool) -> bool {
        if served_this_tick {
            self.busy_since_collect = true;
            return false;
        }
        std::mem::replace(&mut self.busy_since_collect, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_collects_once_at_its_first_quiet_tick_and_never_while_busy() {
        let mut quiet = Quiet::default();
        let ticks = [false, true, true, false, false, true, false];
        let collected: Vec<bool> = ticks.iter().map(|&s| quiet.collect_now(s)).collect();
        assert_eq!(collected, [false, false, false, true, false, false, true]);
    }

    #[test]
    #[allow(unsafe_code)]
    fn blocks_have_the_alignment_asked_for_at_every_size() {
        let mut misaligned = Vec::new();
        for align in [1, 2, 8, 16, 64, 4096] {
            for size in [1, 7, 24, 100, 1000, 1025, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout, freed with the same allocator and layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    p.write_bytes(0xa5, size);
                    let grown = Allocator.realloc(p, layout, size * 2);
                    if (p as usize) % align != 0 || (grown as usize) % align != 0 {
                        misaligned.push((size, align));
                    }
                    Allocator.dealloc(grown, Layout::from_size_align(size * 2, align).unwrap());
                }
            }
        }
        assert_eq!(misaligned, []);
    }
}
