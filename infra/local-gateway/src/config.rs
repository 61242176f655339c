//! What the gateway serves, as `infra/stack.py up` wrote it: `STATE/gateway.json` (derived from
//! template.yaml, the only copy) and `STATE/stack.env` (the emulators' endpoints and the
//! functions' environment).

use flash_aws::Env;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path} (run `make up`, or infra/stack.py up --state DIR)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid gateway configuration")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: expected KEY=value")]
    EnvLine { path: PathBuf, line: usize },
    #[error("{0}")]
    Invalid(String),
}

/// `STATE/gateway.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    pub region: String,
    #[serde(default)]
    pub authorizers: HashMap<String, JwtAuthorizer>,
    #[serde(default)]
    pub throttle: Option<Throttle>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub event_source_mappings: Vec<SqsMapping>,
    /// Each function's `Environment.Variables` (Globals first), by logical id, resolved to the
    /// local stack's table and queues.
    #[serde(default)]
    pub environments: HashMap<String, HashMap<String, String>>,
}

/// An API Gateway JWT authorizer. Locally the gateway itself is the identity provider.
#[derive(Debug, Clone, Deserialize)]
pub struct JwtAuthorizer {
    pub identity_source: String,
    pub issuer: String,
    pub audience: Vec<String>,
}

/// The API's default route throttling (`DefaultRouteSettings`).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Throttle {
    pub rate_per_s: f64,
    pub burst: u32,
}

/// One `HttpApi` event of a function: `METHOD /path/{param}` → function.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub method: String,
    pub path: String,
    pub function: String,
    /// The function's binary (crate) name, which picks the handler.
    pub binary: String,
    pub timeout_s: u64,
    pub authorizer: Option<String>,
    #[serde(default)]
    pub authorization_scopes: Vec<String>,
}

/// One `SQS` event of a function: Lambda's event source mapping.
#[derive(Debug, Clone, Deserialize)]
pub struct SqsMapping {
    pub function: String,
    pub binary: String,
    pub timeout_s: u64,
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: usize,
    pub batching_window_s: u64,
    pub max_concurrency: usize,
    pub report_batch_item_failures: bool,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

impl GatewayConfig {
    pub fn load(state_dir: &Path) -> Result<Self, ConfigError> {
        let path = state_dir.join("gateway.json");
        let config: Self = serde_json::from_str(&read(&path)?)
            .map_err(|source| ConfigError::Parse { path, source })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        for route in &self.routes {
            if let Some(name) = &route.authorizer {
                if !self.authorizers.contains_key(name) {
                    return Err(ConfigError::Invalid(format!(
                        "route {} {} uses authorizer {name}, which is not defined",
                        route.method, route.path
                    )));
                }
            }
        }
        for mapping in &self.event_source_mappings {
            if mapping.batch_size == 0 || mapping.max_concurrency == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{}: batch_size and max_concurrency must be positive",
                    mapping.function
                )));
            }
        }
        Ok(())
    }

    /// The environment template.yaml declares for `function` (a logical id), with `knobs`
    /// (the caller's overrides) set over it.
    pub fn environment(
        &self,
        function: &str,
        knobs: &[(String, String)],
    ) -> Result<Env, ConfigError> {
        let declared = self.environments.get(function).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "gateway.json has no environment for {function} (run `make up` again)"
            ))
        })?;
        let mut env: Env = declared
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (key, value) in knobs {
            env.set(key, value);
        }
        Ok(env)
    }

    /// The authorizer tokens are minted for: the one the routes use.
    pub fn token_authorizer(&self) -> Result<&JwtAuthorizer, ConfigError> {
        self.routes
            .iter()
            .filter_map(|r| r.authorizer.as_deref())
            .chain(self.authorizers.keys().map(String::as_str))
            .find_map(|name| self.authorizers.get(name))
            .ok_or_else(|| ConfigError::Invalid("gateway.json defines no JWT authorizer".into()))
    }
}

/// Reads `STATE/stack.env`: the shell `KEY=value` lines stack.py writes (values quoted the
/// way Python's `shlex.quote` does).
pub fn read_stack_env(state_dir: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let path = state_dir.join("stack.env");
    let text = read(&path)?;
    let mut vars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| ConfigError::EnvLine {
                path: path.clone(),
                line: index + 1,
            })?;
        vars.push((key.to_owned(), unquote(value)));
    }
    Ok(vars)
}

/// Undoes `shlex.quote`: single-quoted runs, with `'"'"'` standing for a quote.
fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => out.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => out.extend(chars.by_ref().take_while(|&c| c != '"')),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoted_values_are_unquoted() {
        assert_eq!(unquote("http://127.0.0.1:1234"), "http://127.0.0.1:1234");
        assert_eq!(unquote("'a b'"), "a b");
        assert_eq!(unquote(r#"'it'"'"'s'"#), "it's");
        assert_eq!(unquote("''"), "");
    }
}
