//! The README's config reference names only keys the config accepts (weak spot 10: it once
//! listed `optim.adamw.betas` where the config wants `beta1` / `beta2`).

use crate::common::root;
use osstune_train::config::TrainConfig;

/// (section, key) of every key in the README's "| section | keys |" table: the leading
/// backticked word of each comma-separated entry (values in parentheses are not keys).
fn readme_keys() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = text
        .find("| section | keys |")
        .expect("README config table");
    let mut out = Vec::new();
    for line in text[start..].lines().skip(2) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 4 {
            break;
        }
        let section = cols[1]
            .trim_matches('`')
            .trim_matches(['[', ']'])
            .to_string();
        for entry in outside_parentheses(cols[2]).split(", ") {
            let Some(rest) = entry.strip_prefix('`') else {
                continue;
            };
            let key = rest.split('`').next().unwrap().to_string();
            out.push((section.clone(), key));
        }
    }
    out
}

/// `s` without its (possibly nested) parenthesized parts, which hold values and notes.
fn outside_parentheses(s: &str) -> String {
    let mut depth = 0usize;
    s.chars()
        .filter(|&c| {
            match c {
                '(' => depth += 1,
                ')' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect()
}

#[test]
fn every_readme_config_key_is_accepted() {
    let keys = readme_keys();
    assert!(keys.len() > 30, "table not parsed: {keys:?}");
    let defaults = serde_json::to_value(TrainConfig::load(None, &[]).unwrap()).unwrap();
    for (section, key) in keys {
        let mut v = &defaults;
        for part in section.split('.') {
            v = &v[part];
        }
        // The default value (JSON scalars and arrays are TOML too); optional keys get one.
        let value = match (&v[&key], key.as_str()) {
            (serde_json::Value::Null, "val_samples") => "1".to_string(),
            (serde_json::Value::Null, _) => "\"somewhere\"".to_string(),
            (x, _) => x.to_string(),
        };
        let set = format!("{section}.{key}={value}");
        TrainConfig::load(None, std::slice::from_ref(&set))
            .unwrap_or_else(|e| panic!("README key {section}.{key} refused ({set}): {e:#}"));
    }
    // And the check can fail: the old spelling is refused.
    assert!(TrainConfig::load(None, &["optim.adamw.betas=[0.9, 0.999]".into()]).is_err());
}
