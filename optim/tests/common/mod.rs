//! Shared helpers for the optim tests: fixtures from `scripts/gen_optim_fixtures.py`, a seeded
//! Gaussian generator and singular values of small matrices.
#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/optim");

pub struct Fixtures {
    pub tensors: HashMap<String, Tensor>,
    pub cases: serde_json::Value,
    pub bf16_tol: f64,
}

impl Fixtures {
    pub fn load() -> Self {
        let tensors =
            candle_core::safetensors::load(format!("{FIXTURES}/optim.safetensors"), &Device::Cpu)
                .expect("fixtures/optim/optim.safetensors (run scripts/gen_optim_fixtures.py)");
        let text = std::fs::read_to_string(format!("{FIXTURES}/cases.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        Fixtures {
            tensors,
            bf16_tol: json["bf16_tol"].as_f64().unwrap(),
            cases: json["cases"].clone(),
        }
    }

    pub fn t(&self, name: &str) -> Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
            .clone()
    }

    pub fn case(&self, name: &str) -> &serde_json::Value {
        let c = &self.cases[name];
        assert!(!c.is_null(), "fixture case {name} missing");
        c
    }
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn strs(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

pub fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    flat(a)
        .iter()
        .zip(flat(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn frob_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    flat(a)
        .iter()
        .zip(flat(b))
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// max |x − ref| / max |ref − p0|: the error relative to how far the parameter moved.
pub fn rel_max_err(x: &Tensor, reference: &Tensor, p0: &Tensor) -> f64 {
    max_abs_diff(x, reference) / max_abs_diff(reference, p0)
}

/// ‖x − ref‖_F / ‖ref − p0‖_F (the metric the generator uses for bf16).
pub fn rel_frob_err(x: &Tensor, reference: &Tensor, p0: &Tensor) -> f64 {
    frob_diff(x, reference) / frob_diff(reference, p0)
}

/// Deterministic standard normals (xorshift64* + Box–Muller).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn tensor(&mut self, dims: &[usize], scale: f64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (self.normal() * scale) as f32).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }
}

/// Singular values of a 2-D tensor via Jacobi eigenvalues of the smaller Gram matrix (f64).
pub fn singular_values(t: &Tensor) -> Vec<f64> {
    let (r, c) = t.dims2().unwrap();
    let v = flat(t);
    let at = |i: usize, j: usize| v[i * c + j];
    let (n, k, wide) = if r <= c { (r, c, true) } else { (c, r, false) };
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            g[i * n + j] = (0..k)
                .map(|l| {
                    if wide {
                        at(i, l) * at(j, l)
                    } else {
                        at(l, i) * at(l, j)
                    }
                })
                .sum();
        }
    }
    let mut eig = jacobi_eigenvalues(g, n);
    eig.iter_mut().for_each(|e| *e = e.max(0.0).sqrt());
    eig.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eig
}

fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}
