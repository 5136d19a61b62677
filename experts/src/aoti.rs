//! AOTInductor packages (`.pt2`, written by `python -m srcache.export`) through libtorch's
//! `AOTIModelPackageLoader`, reached by the small C shim in `cpp/aoti_shim.cpp` (compiled by build.rs against
//! the libtorch tch links). Tensors cross as `at::Tensor*`, which is what a tch `Tensor` wraps: no copies.
//! The shim catches every C++ exception and hands back its message, so none unwinds into Rust.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::Mutex;

use tch::Tensor;

extern "C" {
    fn srcache_aoti_load(path: *const c_char, device_index: c_int, err: *mut *mut c_char) -> *mut c_void;
    fn srcache_aoti_free(handle: *mut c_void);
    fn srcache_aoti_free_str(s: *mut c_char);
    fn srcache_aoti_metadata(handle: *mut c_void, err: *mut *mut c_char) -> *mut c_char;
    fn srcache_aoti_run(
        handle: *mut c_void,
        inputs: *const *const c_void,
        n_in: usize,
        outputs: *mut *mut c_void,
        max_out: usize,
        n_out: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Takes ownership of a string the shim malloc'ed.
fn take_str(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the shim returns NUL-terminated strings from malloc; freed once, here.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { srcache_aoti_free_str(p) };
    Some(s)
}

/// The most outputs an expert package returns: (sr, feat).
const MAX_OUTPUTS: usize = 4;

/// A loaded AOTInductor package. The runner inside is not re-entrant, so runs are serialised by a mutex (each
/// worker thread loads its own expert anyway; the lock is uncontended).
pub(crate) struct AotiModel {
    handle: Mutex<*mut c_void>,
}

// SAFETY: the loader is a heap object only reached through the mutex; libtorch objects are not tied to the
// thread that created them.
unsafe impl Send for AotiModel {}
unsafe impl Sync for AotiModel {}

impl AotiModel {
    /// Loads `path`; `cuda_index`: the CUDA device for a package compiled for CUDA, None for a CPU package.
    pub(crate) fn load(path: &Path, cuda_index: Option<usize>) -> Result<AotiModel, String> {
        let c = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| "path contains a NUL byte".to_string())?;
        let index = cuda_index.map(|i| i as c_int).unwrap_or(-1);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: valid C string; the shim returns a loader or null with a message.
        let handle = unsafe { srcache_aoti_load(c.as_ptr(), index, &mut err) };
        if handle.is_null() {
            return Err(take_str(err).map(|s| crate::error::summarize(&s)).unwrap_or_else(|| "the loader failed without a message".into()));
        }
        Ok(AotiModel { handle: Mutex::new(handle) })
    }

    /// AOTInductor's metadata map of the loaded package, as JSON text.
    pub(crate) fn metadata_json(&self) -> Result<String, String> {
        let h = self.handle.lock().map_err(|_| "package lock poisoned".to_string())?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live loader handle.
        let s = unsafe { srcache_aoti_metadata(*h, &mut err) };
        take_str(s).ok_or_else(|| take_str(err).unwrap_or_else(|| "no metadata".into()))
    }

    /// Runs the package on `inputs` (on the package's device). The outputs are new tensors owned by the caller.
    pub(crate) fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
        let h = self.handle.lock().map_err(|_| "package lock poisoned".to_string())?;
        let ptrs: Vec<*const c_void> = inputs.iter().map(|t| t.as_ptr().cast::<c_void>()).collect();
        let mut outs: [*mut c_void; MAX_OUTPUTS] = [std::ptr::null_mut(); MAX_OUTPUTS];
        let mut n_out = 0usize;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: `ptrs` point at live at::Tensor objects borrowed for the call; the shim writes at most
        // MAX_OUTPUTS heap-allocated at::Tensor pointers, which we own from here on.
        let rc = unsafe { srcache_aoti_run(*h, ptrs.as_ptr(), ptrs.len(), outs.as_mut_ptr(), MAX_OUTPUTS, &mut n_out, &mut err) };
        if rc != 0 {
            return Err(take_str(err).map(|s| crate::error::summarize(&s)).unwrap_or_else(|| "the run failed without a message".into()));
        }
        // SAFETY: each of the first n_out pointers is a `new at::Tensor`, freed by tch's Drop (delete).
        Ok(outs[..n_out.min(MAX_OUTPUTS)].iter().map(|&p| unsafe { Tensor::from_ptr(p.cast()) }).collect())
    }
}

impl Drop for AotiModel {
    fn drop(&mut self) {
        let h = match self.handle.get_mut() {
            Ok(h) => *h,
            Err(poisoned) => *poisoned.into_inner(),
        };
        // SAFETY: the handle came from srcache_aoti_load and is freed once.
        unsafe { srcache_aoti_free(h) };
    }
}
