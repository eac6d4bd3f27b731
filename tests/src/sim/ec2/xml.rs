//! A small writer for the XML documents the EC2 Query API answers with.

use std::fmt::{Display, Write};

pub const EC2_NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// Builds one XML document element by element; values are escaped, names are trusted.
#[derive(Debug, Default)]
pub struct Xml {
    buf: String,
}

impl Xml {
    /// Starts `<{action}Response>` in the EC2 namespace with its requestId, as every successful
    /// answer does.
    pub fn response(action: &str, request_id: &str) -> Self {
        let mut xml = Self::default();
        xml.buf
            .push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        let _ = write!(xml.buf, r#"<{action}Response xmlns="{EC2_NAMESPACE}">"#);
        xml.leaf("requestId", request_id);
        xml
    }

    pub fn finish_response(mut self, action: &str) -> String {
        self.close(&format!("{action}Response"));
        self.buf
    }

    pub fn open(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.buf, "<{name}>");
        self
    }

    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.buf, "</{name}>");
        self
    }

    pub fn leaf(&mut self, name: &str, value: impl Display) -> &mut Self {
        let text = escape(&value.to_string());
        let _ = write!(self.buf, "<{name}>{text}</{name}>");
        self
    }

    pub fn leaf_opt(&mut self, name: &str, value: Option<impl Display>) -> &mut Self {
        if let Some(value) = value {
            self.leaf(name, value);
        }
        self
    }

    pub fn nest(&mut self, name: &str, body: impl FnOnce(&mut Xml)) -> &mut Self {
        self.open(name);
        body(self);
        self.close(name)
    }

    /// `<name><item>..</item>...</name>`, EC2's encoding of every list.
    pub fn set<I: IntoIterator>(
        &mut self,
        name: &str,
        items: I,
        mut item: impl FnMut(&mut Xml, I::Item),
    ) -> &mut Self {
        self.open(name);
        for value in items {
            self.open("item");
            item(self, value);
            self.close("item");
        }
        self.close(name)
    }

    /// A list of plain values: `<name><item>v</item>...</name>`.
    pub fn value_set<I>(&mut self, name: &str, items: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: Display,
    {
        self.open(name);
        for value in items {
            let text = escape(&value.to_string());
            let _ = write!(self.buf, "<item>{text}</item>");
        }
        self.close(name)
    }
}

/// The document EC2 sends with a failed call.
pub fn error_document(code: &str, message: &str, request_id: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>"#,
        escape(code),
        escape(message),
        escape(request_id)
    )
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_has_namespace_request_id_and_escaped_values() {
        let mut xml = Xml::response("CreateTags", "req-1");
        xml.leaf("return", "a<b&c");
        let doc = xml.finish_response("CreateTags");
        assert!(doc.contains(
            r#"<CreateTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>req-1</requestId>"#
        ));
        assert!(doc.ends_with("<return>a&lt;b&amp;c</return></CreateTagsResponse>"));
    }

    #[test]
    fn sets_are_item_lists() {
        let mut xml = Xml::default();
        xml.value_set("groups", ["a", "b"]);
        xml.set("tagSet", [("k", "v")], |x, (k, v)| {
            x.leaf("key", k).leaf("value", v);
        });
        assert_eq!(
            xml.buf,
            "<groups><item>a</item><item>b</item></groups>\
             <tagSet><item><key>k</key><value>v</value></item></tagSet>"
        );
    }

    #[test]
    fn error_document_has_code_message_and_request_id() {
        let doc = error_document("InvalidNetworkInterfaceID.NotFound", "no 'eni-1'", "r");
        assert!(doc.contains("<Errors><Error><Code>InvalidNetworkInterfaceID.NotFound</Code>"));
        assert!(doc.contains("<Message>no &apos;eni-1&apos;</Message>"));
        assert!(doc.contains("<RequestID>r</RequestID>"));
    }
}
