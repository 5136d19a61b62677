// Shared build script of every crate that links libtorch through tch.
//
// The binaries and test executables find libtorch through their RUNPATH, searched in this order:
//   1. $ORIGIN/../lib/python3.X/site-packages/torch/lib (X = 9..13): the binary installed into a Python
//      environment's bin/ (`cp srcache $VIRTUAL_ENV/bin/`, or scripts/install.sh): that environment's torch;
//   2. $ORIGIN/../lib/srcache/torch/lib: the install layout scripts/install.sh writes under any prefix
//      (a link to the torch of the Python environment it was given);
//   3. $ORIGIN/torch/lib: a `torch` folder (or link) beside a copied binary;
//   4. the libtorch it was built against (the build tree's .venv), so target/release/srcache runs as built.
// LD_LIBRARY_PATH still wins over all of them (the linker emits RUNPATH, not RPATH), which is how one binary
// runs against another torch 2.11 install, e.g. a CUDA box's.
fn torch_rpath() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let mut dirs: Vec<String> = (9..=13).map(|minor| format!("$ORIGIN/../lib/python3.{minor}/site-packages/torch/lib")).collect();
    dirs.push("$ORIGIN/../lib/srcache/torch/lib".into());
    dirs.push("$ORIGIN/torch/lib".into());
    if let Ok(dir) = std::env::var("LIBTORCH") {
        dirs.push(format!("{dir}/lib"));
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dirs.join(":"));
}
