//! The CPU emulator's entry points (emu/emu.cpp), or stubs that say it was not built.

#[cfg(feature = "emu")]
mod imp {
    use std::ffi::{c_char, c_int, c_void, CString};

    use crate::CudaError;

    extern "C" {
        fn gptoss_emu_has(name: *const c_char) -> c_int;
        fn gptoss_emu_launch(
            name: *const c_char,
            gx: u32,
            gy: u32,
            gz: u32,
            block: u32,
            smem: u32,
            args: *mut *mut c_void,
        ) -> c_int;
    }

    pub fn has(name: &str) -> bool {
        let Ok(c) = CString::new(name) else { return false };
        // SAFETY: a NUL-terminated string; the function only compares it.
        unsafe { gptoss_emu_has(c.as_ptr()) != 0 }
    }

    pub fn launch(
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        let c = CString::new(name).map_err(|_| CudaError::Driver(format!("bad kernel name {name}")))?;
        // SAFETY: args point at values of the kernel's parameter types (as for cuLaunchKernel);
        // device pointers are host addresses of emulator allocations.
        match unsafe { gptoss_emu_launch(c.as_ptr(), grid.0, grid.1, grid.2, block, smem as u32, args.as_mut_ptr()) } {
            0 => Ok(()),
            _ => Err(CudaError::Driver(format!("{name}: no such kernel in the emulator"))),
        }
    }
}

#[cfg(not(feature = "emu"))]
mod imp {
    use std::ffi::c_void;

    use crate::CudaError;

    pub fn has(_: &str) -> bool {
        false
    }

    pub fn launch(name: &str, _: (u32, u32, u32), _: u32, _: usize, _: &mut [*mut c_void]) -> Result<(), CudaError> {
        Err(CudaError::Driver(format!("{name}: the emulator is not built (feature `emu`)")))
    }
}

pub use imp::*;
