//! The one device parser of srcache: `cpu`, `cpu:N` (N CPU workers), `cuda` (= cuda:0), `cuda:I`, comma lists,
//! and `auto` (the first CUDA device if there is one, else the CPU). Anything else is an error naming the
//! string: a typo must never silently become another device.

use tch::Device;

use crate::error::{ExpertError, Result};

const FORMS: &str = "cpu, cpu:N, cuda, cuda:I, auto";

/// One device: `cpu`, `cuda`, `cuda:I` or `auto`. A CUDA index that does not exist is an error.
pub fn parse_device(spec: &str) -> Result<Device> {
    match parse_devices(spec)?.as_slice() {
        [d] => Ok(*d),
        many => Err(ExpertError::Device { spec: spec.into(), why: format!("one device expected, this names {}", many.len()) }),
    }
}

/// A device list, e.g. `cuda:0,cuda:1` or `cpu:4`. Every CUDA index must exist.
pub fn parse_devices(spec: &str) -> Result<Vec<Device>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let bad = |why: String| ExpertError::Device { spec: part.to_string(), why };
        if part.is_empty() {
            return Err(bad(format!("empty entry in {spec:?} (forms: {FORMS})")));
        }
        match part.split_once(':') {
            None if part == "cpu" => out.push(Device::Cpu),
            None if part == "cuda" => out.push(Device::Cuda(0)),
            None if part == "auto" => out.push(Device::cuda_if_available()),
            Some(("cpu", n)) => {
                let n: usize = n.parse().map_err(|_| bad(format!("{n:?} is not a worker count")))?;
                if n == 0 {
                    return Err(bad("cpu:N needs N >= 1".into()));
                }
                out.extend(std::iter::repeat_n(Device::Cpu, n));
            }
            Some(("cuda", i)) => {
                let i: usize = i.parse().map_err(|_| bad(format!("{i:?} is not a device index")))?;
                out.push(Device::Cuda(i));
            }
            _ => return Err(bad(format!("not a device (forms: {FORMS})"))),
        }
    }
    if out.is_empty() {
        return Err(ExpertError::Device { spec: spec.into(), why: "no devices given".into() });
    }
    let visible = tch::Cuda::device_count();
    for d in &out {
        if let Device::Cuda(i) = d {
            if *i as i64 >= visible {
                return Err(ExpertError::Device { spec: spec.into(), why: format!("cuda:{i} requested but {visible} CUDA device(s) are visible") });
            }
        }
    }
    Ok(out)
}

/// How a device is written back (`cpu`, `cuda:0`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_forms() {
        assert_eq!(parse_devices("cpu").ok(), Some(vec![Device::Cpu]));
        assert_eq!(parse_devices("cpu:3").ok().map(|v| v.len()), Some(3));
        for bad in ["gpu", "cuda:abc", "cpu:0", "cpu:x", "", "cpu,,cpu", "tpu:0"] {
            let e = parse_devices(bad).expect_err(bad).to_string();
            assert!(e.contains("bad device"), "{bad}: {e}");
        }
        if tch::Cuda::device_count() < 8 {
            let e = parse_device("cuda:7").expect_err("cuda:7").to_string();
            assert!(e.contains("CUDA device(s) are visible"), "{e}");
        }
        assert!(parse_device("cpu,cpu").is_err());
        assert_eq!(parse_device("auto").ok(), Some(Device::cuda_if_available()));
    }
}
