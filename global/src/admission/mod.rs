//! Admission: the one way a write reaches global's store. `pipeline` validates the resources a
//! request wants to write and runs the backend checks (the Vault test certificate, the provided
//! CA, builtin CA generation), returning the exact batch to store or every reason for refusal;
//! `commit` stores that batch optimistically under the admission lock; `history` keeps each
//! Mesh's last validation. Nothing here knows HTTP:
//! refusals are typed values ([`AdmissionError`], [`DeleteError`]) that the API maps to statuses.

pub mod commit;
pub mod history;
pub mod pipeline;

pub use commit::{Admission, AdmissionError, DeleteError, ReadSet};
pub use pipeline::{
    Admitted, BackendCheck, CheckStep, Existing, Refused, admit, admit_mesh, secret_users,
};
