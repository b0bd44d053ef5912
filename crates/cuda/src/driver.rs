//! The CUDA driver, thinly: one context and one stream per GPU, device buffers, the embedded
//! kernel image, launches and events. Only the driver API (libcuda.so.1, which comes with
//! the NVIDIA driver) is used, loaded at run time; no toolkit libraries are needed.
//!
//! Everything the model enqueues goes on one stream in order, so no event tracking is
//! needed; the host waits only where it reads results back.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::sys;

use crate::CudaError;

/// The kernels, compiled by tools/build-cuda-kernels.sh (SASS for sm_80/86/89/90a, PTX for
/// newer GPUs).
static FATBIN: &[u8] = include_bytes!("../kernels/gptoss.fatbin");

/// Whether libcuda can be loaded; touching the driver without it would panic inside cudarc.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { sys::is_culib_present() }
}

fn check(r: sys::CUresult, what: &str) -> Result<(), CudaError> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut p: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    let name = unsafe {
        sys::cuGetErrorString(r, &mut p);
        if p.is_null() {
            format!("{r:?}")
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(CudaError::Driver(format!("{what}: {name}")))
}

/// Initializes the driver; Err(NoDriver) when there is none.
pub fn init() -> Result<(), CudaError> {
    if !driver_present() {
        return Err(CudaError::NoDriver);
    }
    // SAFETY: the library is present; cuInit may be called repeatedly.
    check(unsafe { sys::cuInit(0) }, "cuInit")?;
    let mut v = 0;
    // SAFETY: plain query.
    check(unsafe { sys::cuDriverGetVersion(&mut v) }, "cuDriverGetVersion")?;
    // The kernel image is built by CUDA 13.0 and the driver calls are 13.0's.
    if v < 13000 {
        return Err(CudaError::OldDriver { version: format!("{}.{}", v / 1000, (v % 1000) / 10) });
    }
    Ok(())
}

pub fn device_count() -> Result<usize, CudaError> {
    init()?;
    let mut n = 0;
    // SAFETY: plain query after cuInit.
    check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")?;
    Ok(n.max(0) as usize)
}

/// A retained primary context, released when the last holder goes.
pub struct Context {
    pub(crate) ctx: sys::CUcontext,
    dev: sys::CUdevice,
    /// The CPU emulator: no driver; device memory is host memory.
    emu: bool,
}

// SAFETY: a CUcontext may be used from any thread once made current there (bind()).
unsafe impl Send for Context {}
unsafe impl Sync for Context {}

impl Context {
    pub fn bind(&self) -> Result<(), CudaError> {
        if self.emu {
            return Ok(());
        }
        // SAFETY: the context is alive while self is.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.emu {
            return;
        }
        // SAFETY: balances the retain in Gpu::open.
        unsafe {
            sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
    }
}

/// Emulated device memory: host allocations, 256-byte aligned like cuMemAlloc's.
fn emu_layout(bytes: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(bytes.max(1), 256).expect("allocation size")
}

/// Device memory, freed on drop.
pub struct DevBuf {
    pub ptr: u64,
    pub bytes: usize,
    ctx: Arc<Context>,
}

impl DevBuf {
    /// The address `off` bytes in.
    pub fn at(&self, off: usize) -> u64 {
        debug_assert!(off <= self.bytes);
        self.ptr + off as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr != 0 && self.ctx.emu {
            // SAFETY: allocated by Gpu::alloc with this layout.
            unsafe { std::alloc::dealloc(self.ptr as *mut u8, emu_layout(self.bytes)) };
            return;
        }
        if self.ptr != 0 {
            // SAFETY: allocated by cuMemAlloc in this context; freed once.
            unsafe {
                sys::cuCtxSetCurrent(self.ctx.ctx);
                sys::cuMemFree_v2(self.ptr);
            }
        }
    }
}

/// Facts about one GPU.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    pub name: String,
    pub cc: (i32, i32),
    pub total: u64,
    pub sms: i32,
    pub max_smem_optin: i32,
}

pub fn device_facts(ordinal: usize) -> Result<(sys::CUdevice, DeviceFacts), CudaError> {
    init()?;
    let mut dev = 0;
    // SAFETY: queries on a device handle from cuDeviceGet.
    unsafe {
        check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
        let mut buf = [0 as std::ffi::c_char; 128];
        check(sys::cuDeviceGetName(buf.as_mut_ptr(), 128, dev), "cuDeviceGetName")?;
        let name = std::ffi::CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
        let attr = |a| -> Result<i32, CudaError> {
            let mut v = 0;
            check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute")?;
            Ok(v)
        };
        use sys::CUdevice_attribute as A;
        let cc = (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        );
        let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let mut total = 0usize;
        check(sys::cuDeviceTotalMem_v2(&mut total, dev), "cuDeviceTotalMem")?;
        Ok((dev, DeviceFacts { name, cc, total: total as u64, sms, max_smem_optin }))
    }
}

/// Free and total bytes of device `ordinal` (makes its primary context current).
pub fn mem_info(ordinal: usize) -> Result<(u64, u64), CudaError> {
    let (dev, _) = device_facts(ordinal)?;
    // SAFETY: retain/release pair around one query.
    unsafe {
        let mut ctx = std::ptr::null_mut();
        check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
        let r = (|| {
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let (mut free, mut total) = (0usize, 0usize);
            check(sys::cuMemGetInfo_v2(&mut free, &mut total), "cuMemGetInfo")?;
            Ok((free as u64, total as u64))
        })();
        sys::cuDevicePrimaryCtxRelease_v2(dev);
        r
    }
}

/// One GPU with its context, stream and kernels.
pub struct Gpu {
    pub ordinal: usize,
    pub facts: DeviceFacts,
    ctx: Arc<Context>,
    pub stream: sys::CUstream,
    module: sys::CUmodule,
    funcs: HashMap<&'static str, Func>,
}

/// A kernel of the image.
#[derive(Clone, Copy)]
pub struct Func {
    cu: sys::CUfunction,
    name: &'static str,
}

// SAFETY: the runner that owns a Gpu uses it from one thread at a time and binds the context
// on that thread first (Gpu::bind).
unsafe impl Send for Gpu {}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoSuchDevice { ordinal, count });
        }
        let (dev, facts) = device_facts(ordinal)?;
        if facts.cc.0 < 8 {
            return Err(CudaError::UnsupportedDevice { ordinal, name: facts.name.clone(), cc: facts.cc });
        }
        // SAFETY: standard driver setup; every handle is owned by the returned Gpu.
        unsafe {
            let mut ctx = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            let ctx = Arc::new(Context { ctx, dev, emu: false });
            ctx.bind()?;
            let mut stream = std::ptr::null_mut();
            check(
                sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
                "cuStreamCreate",
            )?;
            let mut module = std::ptr::null_mut();
            // cuModuleLoadData takes a pointer to the image and reads its own header for the
            // length; the image is 'static.
            check(
                sys::cuModuleLoadData(&mut module, FATBIN.as_ptr() as *const c_void),
                "loading the kernel image (cuModuleLoadData)",
            )?;
            Ok(Gpu { ordinal, facts, ctx, stream, module, funcs: HashMap::new() })
        }
    }

    /// The CPU emulator as a device (feature `emu`): the same kernels, run on the host.
    #[cfg(feature = "emu")]
    pub fn emulator() -> Gpu {
        let facts =
            DeviceFacts { name: "CPU emulator".into(), cc: (9, 0), total: 1 << 40, sms: 1, max_smem_optin: 227 << 10 };
        let ctx = Arc::new(Context { ctx: std::ptr::null_mut(), dev: 0, emu: true });
        Gpu {
            ordinal: 0,
            facts,
            ctx,
            stream: std::ptr::null_mut(),
            module: std::ptr::null_mut(),
            funcs: HashMap::new(),
        }
    }

    pub fn is_emulator(&self) -> bool {
        self.ctx.emu
    }

    /// Makes this GPU's context current on the calling thread.
    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind()
    }

    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Looks up a kernel, allowing it `smem` bytes of dynamic shared memory.
    pub fn func(&mut self, name: &'static str, smem: usize) -> Result<Func, CudaError> {
        if let Some(&f) = self.funcs.get(name) {
            return Ok(f);
        }
        if self.ctx.emu {
            if !crate::emu::has(name) {
                return Err(CudaError::Driver(format!("{name}: no such kernel in the emulator")));
            }
            let f = Func { cu: std::ptr::null_mut(), name };
            self.funcs.insert(name, f);
            return Ok(f);
        }
        let cname = CString::new(name).map_err(|_| CudaError::Driver(format!("bad kernel name {name}")))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: module loaded in open(); the name is NUL-terminated.
        unsafe {
            check(sys::cuModuleGetFunction(&mut f, self.module, cname.as_ptr()), name)?;
            if smem > 48 * 1024 {
                check(
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    ),
                    name,
                )?;
            }
        }
        let f = Func { cu: f, name };
        self.funcs.insert(name, f);
        Ok(f)
    }

    pub fn alloc(&self, bytes: usize) -> Result<DevBuf, CudaError> {
        if self.ctx.emu {
            // SAFETY: a non-zero-sized layout; freed in DevBuf::drop.
            let p = unsafe { std::alloc::alloc(emu_layout(bytes)) };
            if p.is_null() {
                return Err(CudaError::Driver(format!("emulator: cannot allocate {bytes} bytes")));
            }
            return Ok(DevBuf { ptr: p as u64, bytes, ctx: self.ctx.clone() });
        }
        let mut ptr = 0;
        // SAFETY: plain allocation; owned by the returned DevBuf.
        check(
            unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(1)) },
            &format!("allocating {bytes} bytes of device memory"),
        )?;
        Ok(DevBuf { ptr, bytes, ctx: self.ctx.clone() })
    }

    pub fn alloc_zeroed(&self, bytes: usize) -> Result<DevBuf, CudaError> {
        let b = self.alloc(bytes)?;
        self.memset(b.ptr, 0, bytes)?;
        Ok(b)
    }

    pub fn memset(&self, ptr: u64, byte: u8, bytes: usize) -> Result<(), CudaError> {
        if self.ctx.emu {
            // SAFETY: ptr..ptr+bytes lies in one of our (host) allocations.
            unsafe { std::ptr::write_bytes(ptr as *mut u8, byte, bytes) };
            return Ok(());
        }
        // SAFETY: ptr..ptr+bytes lies in one of our allocations (callers' contract).
        check(unsafe { sys::cuMemsetD8Async(ptr, byte, bytes, self.stream) }, "cuMemsetD8")
    }

    /// Copies `src` to device address `dst` and waits (the source may be dropped after).
    pub fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        let bytes = std::mem::size_of_val(src);
        if bytes == 0 {
            return Ok(());
        }
        if self.ctx.emu {
            // SAFETY: dst..dst+bytes lies in one of our (host) allocations.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr() as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        }
        // SAFETY: src is a live slice of `bytes` bytes; the copy completes before return.
        unsafe {
            check(sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr() as *const c_void, bytes, self.stream), "copy to device")?;
        }
        self.sync()
    }

    /// Copies device bytes at `src` into `dst` (waits for everything before it on the stream).
    pub fn download<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        let bytes = std::mem::size_of_val(dst);
        if bytes == 0 {
            return Ok(());
        }
        if self.ctx.emu {
            // SAFETY: src..src+bytes lies in one of our (host) allocations.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr() as *mut u8, bytes) };
            return Ok(());
        }
        // SAFETY: dst is a live mutable slice of `bytes` bytes; the copy completes before return.
        unsafe {
            check(
                sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr() as *mut c_void, src, bytes, self.stream),
                "copy from device",
            )?;
        }
        self.sync()
    }

    pub fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<(), CudaError> {
        if bytes == 0 {
            return Ok(());
        }
        if self.ctx.emu {
            // SAFETY: both ranges lie in our (host) allocations.
            unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        }
        // SAFETY: both ranges lie in our allocations (callers' contract).
        check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream) }, "device copy")
    }

    pub fn sync(&self) -> Result<(), CudaError> {
        if self.ctx.emu {
            return Ok(());
        }
        // SAFETY: our stream.
        check(unsafe { sys::cuStreamSynchronize(self.stream) }, "running kernels (cuStreamSynchronize)")
    }

    /// Enqueues `f` (from [`Gpu::func`]) on the stream. `args` point at each kernel argument's
    /// value; call sites pass exactly what the kernel declares.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    pub fn launch(
        &self,
        f: Func,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        if self.ctx.emu {
            return crate::emu::launch(f.name, grid, block, smem, args);
        }
        let f = f.cu;
        // SAFETY: args match the kernel's parameters (each call site passes the values the
        // kernel declares, structs #[repr(C)] twins of the CUDA ones).
        check(
            unsafe {
                sys::cuLaunchKernel(
                    f,
                    grid.0,
                    grid.1,
                    grid.2,
                    block,
                    1,
                    1,
                    smem as u32,
                    self.stream,
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "kernel launch",
        )
    }

    pub fn event(&self) -> Result<Event, CudaError> {
        if self.ctx.emu {
            return Ok(Event { e: std::ptr::null_mut(), ctx: self.ctx.clone(), at: std::cell::Cell::new(None) });
        }
        let mut e = std::ptr::null_mut();
        // SAFETY: owned by the returned Event.
        check(unsafe { sys::cuEventCreate(&mut e, 0) }, "cuEventCreate")?;
        Ok(Event { e, ctx: self.ctx.clone(), at: std::cell::Cell::new(None) })
    }

    pub fn record(&self, e: &Event) -> Result<(), CudaError> {
        if self.ctx.emu {
            e.at.set(Some(std::time::Instant::now()));
            return Ok(());
        }
        // SAFETY: both handles alive.
        check(unsafe { sys::cuEventRecord(e.e, self.stream) }, "cuEventRecord")
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        if self.ctx.emu {
            return;
        }
        // SAFETY: handles created in open(); freed once, context current.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx.ctx);
            sys::cuStreamSynchronize(self.stream);
            sys::cuModuleUnload(self.module);
            sys::cuStreamDestroy_v2(self.stream);
        }
    }
}

impl Gpu {
    /// From now on, what is enqueued on the stream is recorded, not run, until
    /// [`Gpu::end_capture`].
    /// Whether launches can be recorded as graphs (not in the emulator, which runs them now).
    pub fn graphs(&self) -> bool {
        !self.ctx.emu
    }

    pub fn begin_capture(&self) -> Result<(), CudaError> {
        // SAFETY: our stream.
        check(
            unsafe {
                sys::cuStreamBeginCapture_v2(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            },
            "cuStreamBeginCapture",
        )
    }

    /// Ends a capture (always, so the stream runs again) and instantiates what was recorded.
    pub fn end_capture(&self) -> Result<Graph, CudaError> {
        let mut graph = std::ptr::null_mut();
        // SAFETY: ends the capture begun by begin_capture.
        let end = check(unsafe { sys::cuStreamEndCapture(self.stream, &mut graph) }, "cuStreamEndCapture");
        let mut g = Graph { graph, exec: std::ptr::null_mut(), ctx: self.ctx.clone() };
        end?;
        // SAFETY: instantiates the captured graph; both handles owned by `g`.
        check(unsafe { sys::cuGraphInstantiateWithFlags(&mut g.exec, g.graph, 0) }, "cuGraphInstantiate")?;
        Ok(g)
    }

    pub fn replay(&self, g: &Graph) -> Result<(), CudaError> {
        // SAFETY: an instantiated graph of this context, on our stream.
        check(unsafe { sys::cuGraphLaunch(g.exec, self.stream) }, "cuGraphLaunch")
    }
}

/// A captured sequence of kernels, replayed with one launch.
pub struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    ctx: Arc<Context>,
}

// SAFETY: used only by the runner that owns it, from one thread at a time.
unsafe impl Send for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: handles created by capture(); destroyed once.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx.ctx);
            if !self.exec.is_null() {
                sys::cuGraphExecDestroy(self.exec);
            }
            if !self.graph.is_null() {
                sys::cuGraphDestroy(self.graph);
            }
        }
    }
}

pub struct Event {
    e: sys::CUevent,
    ctx: Arc<Context>,
    /// When recorded, in the emulator.
    at: std::cell::Cell<Option<std::time::Instant>>,
}

impl Event {
    /// Milliseconds from `self` to `end` (both recorded and complete).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32, CudaError> {
        if self.ctx.emu {
            return match (self.at.get(), end.at.get()) {
                (Some(a), Some(b)) => Ok(b.duration_since(a).as_secs_f32() * 1e3),
                _ => Err(CudaError::Driver("event not recorded".into())),
            };
        }
        let mut ms = 0f32;
        // SAFETY: both events alive.
        unsafe {
            check(sys::cuEventSynchronize(end.e), "cuEventSynchronize")?;
            check(sys::cuEventElapsedTime_v2(&mut ms, self.e, end.e), "cuEventElapsedTime")?;
        }
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.ctx.emu {
            return;
        }
        // SAFETY: created by cuEventCreate.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx.ctx);
            sys::cuEventDestroy_v2(self.e);
        }
    }
}

/// Kernel arguments as the driver wants them: pointers to each value.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        [$(&$a as *const _ as *mut std::ffi::c_void),*]
    };
}
