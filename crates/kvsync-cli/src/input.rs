//! Where `put` takes its values from: arguments, a file or standard input, as lines or
//! as one JSON array.

use std::{io::Read, path::Path};

use crate::api::Error;

/// The values for `put`. `args` is what followed the key: the values themselves, or
/// `-` alone for standard input; `file` (`-`: standard input) replaces them. With
/// `json`, the one argument or the input is a JSON array of strings; else each
/// argument is a value, and input has one value per line.
pub fn values(args: Vec<String>, file: Option<&Path>, json: bool) -> Result<Vec<String>, Error> {
    let text = match (file, args.as_slice()) {
        (Some(f), _) if f.as_os_str() == "-" => Some(stdin()?),
        (Some(f), _) => Some(std::fs::read_to_string(f).map_err(|source| Error::Input {
            what: format!("reading {}", f.display()),
            source,
        })?),
        (None, [one]) if one == "-" => Some(stdin()?),
        (None, _) => None,
    };
    match (text, json) {
        (Some(t), true) => json_array(&t),
        (Some(t), false) => Ok(lines(&t)),
        (None, true) => match args.as_slice() {
            [one] => json_array(one),
            _ => Err(Error::Usage(
                "--json-values takes one argument (a JSON array), --file or standard input".into(),
            )),
        },
        (None, false) => Ok(args),
    }
}

fn stdin() -> Result<String, Error> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|source| Error::Input {
            what: "reading standard input".into(),
            source,
        })?;
    Ok(s)
}

/// One value per line; a final newline ends the last line rather than adding an empty
/// value, and CRLF line ends count as LF.
fn lines(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_owned())
        .collect()
}

fn json_array(text: &str) -> Result<Vec<String>, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::Usage(format!("--json-values: not a JSON array of strings: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_lf_and_crlf() {
        assert_eq!(lines("a b\r\nc\n"), ["a b", "c"]);
        assert_eq!(lines("a\n\nb"), ["a", "", "b"]);
        assert_eq!(lines("\n"), Vec::<String>::new());
        assert_eq!(lines(""), Vec::<String>::new());
        assert_eq!(lines("a\n\n"), ["a", ""]);
    }

    #[test]
    fn json_values_come_from_the_one_argument() {
        let v = values(vec![r#"["x\ny", " z "]"#.into()], None, true).unwrap();
        assert_eq!(v, ["x\ny", " z "]);
        assert!(matches!(
            values(vec!["a".into(), "b".into()], None, true),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            values(vec!["[1]".into()], None, true),
            Err(Error::Usage(_))
        ));
        assert_eq!(values(vec!["a".into()], None, false).unwrap(), ["a"]);
    }
}
