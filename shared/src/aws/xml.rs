//! AWS's XML answers as a small owned tree, read by element names.
//!
//! EC2's Query API answers in XML whose lists are `<somethingSet><item>…</item></somethingSet>`; the
//! few fields the services read are found by walking names, so nothing here knows EC2's model.

/// One element: its local name (namespace dropped), its text, and its child elements in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

/// Parses a document; the error says where it is malformed.
pub fn parse(body: &str) -> Result<Element, String> {
    let document = roxmltree::Document::parse(body).map_err(|e| e.to_string())?;
    Ok(owned(document.root_element()))
}

fn owned(node: roxmltree::Node<'_, '_>) -> Element {
    let mut element = Element {
        name: node.tag_name().name().to_string(),
        ..Element::default()
    };
    for child in node.children() {
        if child.is_element() {
            element.children.push(owned(child));
        } else if child.is_text() {
            element.text.push_str(child.text().unwrap_or_default());
        }
    }
    if !element.children.is_empty() {
        // Only leaves carry values; the whitespace between elements is layout.
        element.text.clear();
    }
    element
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The element at a path of child names.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter()
            .try_fold(self, |element, name| element.child(name))
    }

    /// The text at a path, if the element is there and not empty (EC2 sends `<x/>` for "none").
    pub fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)
            .map(|e| e.text.as_str())
            .filter(|t| !t.is_empty())
    }

    /// The `<item>`s of the list at a path (none if the list is absent).
    pub fn items<'a>(&'a self, path: &[&str]) -> impl Iterator<Item = &'a Element> + 'a {
        self.at(path)
            .into_iter()
            .flat_map(|list| list.children.iter().filter(|c| c.name == "item"))
    }

    /// Every element named `name` at any depth, this one included, in document order.
    pub fn descendants<'a>(&'a self, name: &'a str) -> Vec<&'a Element> {
        let mut found = Vec::new();
        self.collect(name, &mut found);
        found
    }

    fn collect<'a>(&'a self, name: &str, found: &mut Vec<&'a Element>) {
        if self.name == name {
            found.push(self);
        }
        for child in &self.children {
            child.collect(name, found);
        }
    }

    /// A `tagSet`'s (or any key/value list's) items as pairs.
    pub fn tags(&self) -> Vec<(String, String)> {
        self.items(&["tagSet"])
            .filter_map(|item| {
                let key = item.text_at(&["key"])?;
                Some((
                    key.to_string(),
                    item.text_at(&["value"]).unwrap_or("").to_string(),
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet>
    <item>
      <instancesSet>
        <item>
          <instanceId>i-1</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <dnsName/>
          <tagSet>
            <item><key>a</key><value>1 &amp; 2</value></item>
            <item><key>b</key><value/></item>
          </tagSet>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>page-2</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn reads_lists_paths_tags_and_empty_leaves() {
        let root = parse(DESCRIBE).unwrap();
        assert_eq!(root.name, "DescribeInstancesResponse");
        assert_eq!(root.text_at(&["nextToken"]), Some("page-2"));
        let instances: Vec<&Element> = root
            .items(&["reservationSet"])
            .flat_map(|r| r.items(&["instancesSet"]))
            .collect();
        assert_eq!(instances.len(), 1);
        let instance = instances[0];
        assert_eq!(instance.text_at(&["instanceId"]), Some("i-1"));
        assert_eq!(
            instance.text_at(&["instanceState", "name"]),
            Some("running")
        );
        assert_eq!(instance.text_at(&["dnsName"]), None);
        assert_eq!(
            instance.tags(),
            vec![
                ("a".to_string(), "1 & 2".to_string()),
                ("b".to_string(), String::new())
            ]
        );
        assert_eq!(root.items(&["noSuchSet"]).count(), 0);
        assert_eq!(root.descendants("instanceId").len(), 1);
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("").is_err());
    }
}
