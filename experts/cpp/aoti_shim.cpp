// A C ABI over libtorch's AOTIModelPackageLoader (the C++ loader of torch._inductor.aoti_compile_and_package
// packages, .pt2), for experts/src/aoti.rs. Tensors cross as `at::Tensor*`, which is what tch's `Tensor` wraps
// (Tensor::as_ptr / Tensor::from_ptr), so inputs and outputs are never copied.
//
// Every entry point catches all C++ exceptions and returns them as a malloc'ed message: an exception must not
// unwind into Rust. Strings returned through `err` / as results are freed with srcache_aoti_free_str.

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <dlfcn.h>

#include <ATen/Tensor.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace {

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.data(), s.size());
    p[s.size()] = '\0';
  }
  return p;
}

void set_err(char** err, const std::string& s) {
  if (err != nullptr) {
    *err = dup(s);
  }
}

std::string json_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string to_json(const std::unordered_map<std::string, std::string>& m) {
  std::string out = "{";
  bool first = true;
  for (const auto& kv : m) {
    if (!first) out += ",";
    first = false;
    out += "\"" + json_escape(kv.first) + "\":\"" + json_escape(kv.second) + "\"";
  }
  return out + "}";
}

// A package's compiled .so needs libtorch.so, which a Rust binary does not link (tch links torch_cpu and c10,
// and the linker drops the rest as unneeded), and the dlopen of the package does not search the binary's
// RUNPATH. So libtorch.so is loaded first, globally, from the folder of the libc10 this process already uses:
// the same libtorch, wherever it was found.
void preload_libtorch() {
  static bool done = false;
  if (done) return;
  done = true;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&c10::GetCPUAllocator), &info) == 0 || info.dli_fname == nullptr) return;
  std::string path(info.dli_fname);
  auto slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? std::string(".") : path.substr(0, slash);
  dlopen((dir + "/libtorch.so").c_str(), RTLD_NOW | RTLD_GLOBAL);
}

}  // namespace

extern "C" {

// Loads a package. device_index: -1 for the device the package was compiled for (CPU), else the CUDA index.
void* srcache_aoti_load(const char* path, int device_index, char** err) {
  try {
    preload_libtorch();
    auto* loader = new torch::inductor::AOTIModelPackageLoader(
        path, "model", /*run_single_threaded=*/false, /*num_runners=*/1, static_cast<c10::DeviceIndex>(device_index));
    return loader;
  } catch (const std::exception& e) {
    set_err(err, e.what());
  } catch (...) {
    set_err(err, "unknown C++ exception while loading the AOTInductor package");
  }
  return nullptr;
}

void srcache_aoti_free(void* handle) {
  try {
    delete static_cast<torch::inductor::AOTIModelPackageLoader*>(handle);
  } catch (...) {
  }
}

void srcache_aoti_free_str(char* s) { std::free(s); }

// The package's metadata (AOTInductor's string map) as a JSON object, from a loaded package.
char* srcache_aoti_metadata(void* handle, char** err) {
  try {
    auto* loader = static_cast<torch::inductor::AOTIModelPackageLoader*>(handle);
    return dup(to_json(loader->get_metadata()));
  } catch (const std::exception& e) {
    set_err(err, e.what());
  } catch (...) {
    set_err(err, "unknown C++ exception while reading the package metadata");
  }
  return nullptr;
}

// Runs the model on `n_in` inputs. On success writes up to `max_out` new `at::Tensor*` (owned by the caller,
// which wraps them with Tensor::from_ptr) and their count to `n_out`, and returns 0; on failure returns -1 with
// the message in `err`.
int srcache_aoti_run(void* handle, at::Tensor* const* inputs, size_t n_in, at::Tensor** outputs, size_t max_out,
                     size_t* n_out, char** err) {
  try {
    auto* loader = static_cast<torch::inductor::AOTIModelPackageLoader*>(handle);
    std::vector<at::Tensor> in;
    in.reserve(n_in);
    for (size_t i = 0; i < n_in; ++i) {
      in.push_back(*inputs[i]);
    }
    std::vector<at::Tensor> out = loader->run(in);
    if (out.size() > max_out) {
      set_err(err, "the package returned " + std::to_string(out.size()) + " outputs, at most " +
                       std::to_string(max_out) + " expected");
      return -1;
    }
    for (size_t i = 0; i < out.size(); ++i) {
      outputs[i] = new at::Tensor(std::move(out[i]));
    }
    *n_out = out.size();
    return 0;
  } catch (const std::exception& e) {
    set_err(err, e.what());
  } catch (...) {
    set_err(err, "unknown C++ exception while running the AOTInductor package");
  }
  return -1;
}

}  // extern "C"
