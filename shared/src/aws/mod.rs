//! A small AWS client: credentials found as AWS's SDKs find them, SigV4 signing (`aws-sigv4`), the
//! Query protocol EC2 speaks, and its XML answers. The services call a dozen EC2 operations; this
//! replaces the AWS SDK, whose generated EC2 crate and credential chain were a third of a clean build.

pub mod credentials;
pub mod ec2;
pub mod json;
pub mod query;
pub mod signing;
mod transport;
pub mod xml;

pub use credentials::{CredentialChain, Credentials, CredentialsError};
pub use query::{Params, QueryClient, QueryError};
pub use xml::Element;
