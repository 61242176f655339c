//! How results are printed: text for people, JSON (`--json`) for scripts.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn print_json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("flashctl: could not print JSON: {e}"),
        }
    }

    /// `value` as JSON with `--json`, pretty JSON otherwise (for one record).
    pub fn record<T: Serialize>(&self, value: &T) {
        if self.json {
            self.print_json(value);
        } else if let Ok(s) = serde_json::to_string_pretty(value) {
            println!("{s}");
        }
    }
}
