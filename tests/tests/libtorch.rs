//! libtorch is really there and works end to end: build a small conv net with tch, trace it to TorchScript,
//! save it, load it back and check the loaded module computes exactly what the original did.

use tch::{nn, nn::Module, CModule, Device, Kind, Tensor};

#[test]
fn conv_net_traces_saves_loads_and_matches() -> Result<(), tch::TchError> {
    tch::manual_seed(7);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
    let net = nn::seq()
        .add(nn::conv2d(&root / "c1", 3, 16, 3, cfg))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(&root / "c2", 16, 12, 3, cfg))
        .add_fn(|x| x.pixel_shuffle(2));

    let x = Tensor::f_rand([2, 3, 20, 24], (Kind::Float, Device::Cpu))?;
    let expected = tch::no_grad(|| net.forward(&x));
    assert_eq!(expected.size(), [2, 3, 40, 48]);

    // Tracing records parameters as constants, which torch refuses for tensors that require grad.
    vs.freeze();
    let traced = CModule::create_by_tracing("Net", "forward", &[x.shallow_clone()], &mut |inputs| vec![net.forward(&inputs[0])])?;
    let dir = tempfile::tempdir().map_err(|e| tch::TchError::FileFormat(e.to_string()))?;
    let path = dir.path().join("net.pt");
    traced.save(&path)?;

    let loaded = CModule::load_on_device(&path, Device::Cpu)?;
    let got = tch::no_grad(|| loaded.forward_ts(&[&x]))?;
    assert_eq!(got.size(), expected.size());
    let max_diff = f64::try_from((&got - &expected).abs().max())?;
    assert_eq!(max_diff, 0.0, "loaded TorchScript module differs from the tch net");

    // A different input must give a different output: the module really computes, it is not a constant.
    let y = Tensor::f_rand([2, 3, 20, 24], (Kind::Float, Device::Cpu))?;
    let other = tch::no_grad(|| loaded.forward_ts(&[&y]))?;
    assert!(f64::try_from((&other - &expected).abs().max())? > 1e-3);
    Ok(())
}
