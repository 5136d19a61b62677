// Shared build script of every crate that links libtorch through tch.
//
// The binaries and test executables get an rpath to the libtorch they were built against, so they run
// without LD_LIBRARY_PATH. LD_LIBRARY_PATH still wins over it (the linker emits RUNPATH), which is how the
// same binary runs against another torch 2.11 install, e.g. a CUDA box's.
fn torch_rpath() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}/lib");
    }
}
