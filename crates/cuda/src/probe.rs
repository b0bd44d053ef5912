//! The device's read bandwidth, measured as `gptoss bench` measures the CPU's: the best of
//! several passes of 16-byte loads over a buffer far larger than the L2 cache.

use crate::args;
use crate::driver::Gpu;
use crate::CudaError;

/// Bytes read per pass (4 GiB: every cache is a rounding error).
pub const PROBE_BYTES: usize = 4 << 30;

/// Bytes per second, the best of `passes`. Allocates and frees PROBE_BYTES (less if the
/// device has less free).
pub fn read_bandwidth(gpu: &mut Gpu, passes: usize) -> Result<f64, CudaError> {
    let (free, _) = crate::driver::mem_info(gpu.ordinal)?;
    let bytes = PROBE_BYTES.min((free as usize / 4) & !0xffff).max(1 << 26);
    gpu.bind()?;
    let buf = gpu.alloc(bytes)?;
    gpu.memset(buf.ptr, 1, bytes)?;
    let sink = gpu.alloc_zeroed(4)?;
    let f = gpu.func("probe_read", 0)?;
    let n = (bytes / 16) as i64;
    let blocks = (gpu.facts.sms.max(1) * 8) as u32;
    let (p, s) = (buf.ptr, sink.ptr);
    gpu.launch(f, (blocks, 1, 1), 512, 0, &mut args![p, n, s])?; // warm-up
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let (e0, e1) = (gpu.event()?, gpu.event()?);
        gpu.record(&e0)?;
        gpu.launch(f, (blocks, 1, 1), 512, 0, &mut args![p, n, s])?;
        gpu.record(&e1)?;
        let ms = e0.elapsed_ms(&e1)? as f64;
        if ms > 0.0 {
            best = best.max(bytes as f64 / (ms / 1e3));
        }
    }
    Ok(best)
}
