//! Account commands: create, delete (with everything of the account), set
//! password.
use crate::command::RosterItem;
use crate::table::Table;

pub(super) fn owner_range(
    roster: &Table<(String, String), RosterItem>,
    owner: &str,
) -> Vec<(String, String)> {
    roster
        .range((owner.to_string(), String::new())..)
        .take_while(|((o, _), _)| o == owner)
        .map(|(k, _)| k.clone())
        .collect()
}
