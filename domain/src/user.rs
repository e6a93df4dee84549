//! The User aggregate: registration, profile, roles, deactivation.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, DomainError};
use crate::ids::UserId;
use crate::values::{Email, Name, Role};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    #[serde(rename = "user.registered")]
    Registered(UserRegistered),
    #[serde(rename = "user.updated")]
    Updated(UserUpdated),
    #[serde(rename = "user.role_changed")]
    RoleChanged(UserRoleChanged),
    #[serde(rename = "user.deactivated")]
    Deactivated(UserDeactivated),
    #[serde(rename = "user.tokens_revoked")]
    TokensRevoked(UserTokensRevoked),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub roles: Vec<Role>,
}

/// The full profile after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdated {
    pub id: UserId,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRoleChanged {
    pub id: UserId,
    pub roles: Vec<Role>,
    pub previous_roles: Vec<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDeactivated {
    pub id: UserId,
}

/// Every token of the user issued (`iat`) at or before `issued_up_to` (Unix seconds) is
/// refused from now on. A user's stream may hold it before the user registers: an
/// emergency does not wait for a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTokensRevoked {
    pub id: UserId,
    pub issued_up_to: i64,
}

impl UserEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            UserEvent::Registered(_) => "user.registered",
            UserEvent::Updated(_) => "user.updated",
            UserEvent::RoleChanged(_) => "user.role_changed",
            UserEvent::Deactivated(_) => "user.deactivated",
            UserEvent::TokensRevoked(_) => "user.tokens_revoked",
        }
    }

    /// The user the event is about.
    pub fn user_id(&self) -> UserId {
        match self {
            UserEvent::Registered(e) => e.id,
            UserEvent::Updated(e) => e.id,
            UserEvent::RoleChanged(e) => e.id,
            UserEvent::Deactivated(e) => e.id,
            UserEvent::TokensRevoked(e) => e.id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// `roles`: what the registering token grants among Keel's roles (`user` is always
    /// recorded).
    Register {
        email: Email,
        name: Name,
        roles: Vec<Role>,
    },
    Update {
        email: Option<Email>,
        name: Option<Name>,
    },
    ChangeRoles {
        roles: Vec<Role>,
    },
    Deactivate,
    /// Refuse every token of the user issued at or before `issued_up_to` (Unix seconds).
    RevokeTokens {
        issued_up_to: i64,
    },
}

/// A registered user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub active: bool,
}

pub fn decide(
    state: Option<&User>,
    actor: &Actor,
    id: UserId,
    command: &UserCommand,
) -> Result<Vec<UserEvent>, DomainError> {
    actor.ensure_not_deactivated()?;
    let is_self = actor.id == id;
    let may_manage = is_self || actor.admin;
    match command {
        UserCommand::Register { email, name, roles } => {
            if !may_manage {
                return Err(DomainError::Forbidden("you may only register yourself"));
            }
            if state.is_some() {
                return Err(DomainError::Conflict("user is already registered"));
            }
            Ok(vec![UserEvent::Registered(UserRegistered {
                id,
                email: email.as_str().to_owned(),
                name: name.as_str().to_owned(),
                roles: normalized(&[&[Role::User], roles.as_slice()].concat()),
            })])
        }
        UserCommand::Update { email, name } => {
            if !may_manage {
                return Err(DomainError::Forbidden(
                    "you may only change your own profile",
                ));
            }
            let user = existing_active(state)?;
            let email = email.as_ref().map_or(user.email.as_str(), Email::as_str);
            let name = name.as_ref().map_or(user.name.as_str(), Name::as_str);
            if email == user.email && name == user.name {
                return Ok(vec![]);
            }
            Ok(vec![UserEvent::Updated(UserUpdated {
                id,
                email: email.to_owned(),
                name: name.to_owned(),
            })])
        }
        UserCommand::ChangeRoles { roles } => {
            if !actor.admin {
                return Err(DomainError::Forbidden("only an admin may change roles"));
            }
            let user = existing_active(state)?;
            let roles = normalized(roles);
            if roles == user.roles {
                return Ok(vec![]);
            }
            Ok(vec![UserEvent::RoleChanged(UserRoleChanged {
                id,
                roles,
                previous_roles: user.roles.clone(),
            })])
        }
        UserCommand::Deactivate => {
            if !may_manage {
                return Err(DomainError::Forbidden("you may only deactivate yourself"));
            }
            match state {
                None => Err(DomainError::NotFound("no such user")),
                Some(user) if !user.active => Ok(vec![]),
                Some(_) => Ok(vec![UserEvent::Deactivated(UserDeactivated { id })]),
            }
        }
        UserCommand::RevokeTokens { issued_up_to } => {
            if !actor.admin {
                return Err(DomainError::Forbidden(
                    "only an admin may revoke a user's tokens",
                ));
            }
            Ok(vec![UserEvent::TokensRevoked(UserTokensRevoked {
                id,
                issued_up_to: *issued_up_to,
            })])
        }
    }
}

fn existing_active(state: Option<&User>) -> Result<&User, DomainError> {
    match state {
        None => Err(DomainError::NotFound("no such user")),
        Some(user) if !user.active => Err(DomainError::Conflict("user is deactivated")),
        Some(user) => Ok(user),
    }
}

/// Roles as a set: sorted, without repeats.
fn normalized(roles: &[Role]) -> Vec<Role> {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles
}

pub fn apply(state: &mut Option<User>, event: &UserEvent) {
    match event {
        UserEvent::Registered(e) => {
            *state = Some(User {
                id: e.id,
                email: e.email.clone(),
                name: e.name.clone(),
                roles: normalized(&e.roles),
                active: true,
            });
        }
        UserEvent::Updated(e) => {
            if let Some(user) = state {
                user.email.clone_from(&e.email);
                user.name.clone_from(&e.name);
            }
        }
        UserEvent::RoleChanged(e) => {
            if let Some(user) = state {
                user.roles = normalized(&e.roles);
            }
        }
        UserEvent::Deactivated(_) => {
            if let Some(user) = state {
                user.active = false;
            }
        }
        // Enforced by the API's policy, not by any decision of the aggregate.
        UserEvent::TokensRevoked(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Standing;

    fn ada() -> UserId {
        UserId(uuid::Uuid::from_u128(1))
    }

    fn bob() -> UserId {
        UserId(uuid::Uuid::from_u128(2))
    }

    fn actor(id: UserId, admin: bool, standing: Standing) -> Actor {
        Actor {
            id,
            admin,
            standing,
        }
    }

    fn given(events: &[UserEvent]) -> Option<User> {
        let mut state = None;
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn registered(id: UserId) -> UserEvent {
        UserEvent::Registered(UserRegistered {
            id,
            email: "ada@example.com".into(),
            name: "Ada".into(),
            roles: vec![Role::User],
        })
    }

    fn register() -> UserCommand {
        UserCommand::Register {
            email: Email::parse("ada@example.com").unwrap(),
            name: Name::parse("Ada").unwrap(),
            roles: vec![],
        }
    }

    #[test]
    fn a_new_user_registers_itself_with_the_user_role() {
        let state = given(&[]);
        let events = decide(
            state.as_ref(),
            &actor(ada(), false, Standing::Unregistered),
            ada(),
            &register(),
        );
        assert_eq!(events, Ok(vec![registered(ada())]));
    }

    #[test]
    fn registering_twice_is_a_conflict() {
        let state = given(&[registered(ada())]);
        let result = decide(
            state.as_ref(),
            &actor(ada(), false, Standing::Active),
            ada(),
            &register(),
        );
        assert!(matches!(result, Err(DomainError::Conflict(_))));
    }

    #[test]
    fn only_an_admin_registers_someone_else() {
        let anyone = decide(
            None,
            &actor(bob(), false, Standing::Active),
            ada(),
            &register(),
        );
        assert!(matches!(anyone, Err(DomainError::Forbidden(_))));
        let admin = decide(
            None,
            &actor(bob(), true, Standing::Unregistered),
            ada(),
            &register(),
        );
        assert_eq!(admin, Ok(vec![registered(ada())]));
    }

    #[test]
    fn an_update_carries_the_full_profile() {
        let state = given(&[registered(ada())]);
        let events = decide(
            state.as_ref(),
            &actor(ada(), false, Standing::Active),
            ada(),
            &UserCommand::Update {
                email: None,
                name: Some(Name::parse("Ada L.").unwrap()),
            },
        );
        assert_eq!(
            events,
            Ok(vec![UserEvent::Updated(UserUpdated {
                id: ada(),
                email: "ada@example.com".into(),
                name: "Ada L.".into(),
            })])
        );
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing() {
        let state = given(&[registered(ada())]);
        let events = decide(
            state.as_ref(),
            &actor(ada(), false, Standing::Active),
            ada(),
            &UserCommand::Update {
                email: Some(Email::parse("ada@example.com").unwrap()),
                name: None,
            },
        );
        assert_eq!(events, Ok(vec![]));
    }

    #[test]
    fn another_users_profile_is_forbidden_and_unknown_users_are_not_found() {
        let update = UserCommand::Update {
            email: None,
            name: Some(Name::parse("X").unwrap()),
        };
        let state = given(&[registered(ada())]);
        let other = decide(
            state.as_ref(),
            &actor(bob(), false, Standing::Active),
            ada(),
            &update,
        );
        assert!(matches!(other, Err(DomainError::Forbidden(_))));
        let missing = decide(None, &actor(bob(), true, Standing::Active), ada(), &update);
        assert!(matches!(missing, Err(DomainError::NotFound(_))));
    }

    #[test]
    fn role_changes_need_an_admin_and_record_the_previous_roles() {
        let state = given(&[registered(ada())]);
        let roles = UserCommand::ChangeRoles {
            roles: vec![Role::Admin, Role::User, Role::Admin],
        };
        let by_self = decide(
            state.as_ref(),
            &actor(ada(), false, Standing::Active),
            ada(),
            &roles,
        );
        assert!(matches!(by_self, Err(DomainError::Forbidden(_))));
        let by_admin = decide(
            state.as_ref(),
            &actor(bob(), true, Standing::Active),
            ada(),
            &roles,
        );
        assert_eq!(
            by_admin,
            Ok(vec![UserEvent::RoleChanged(UserRoleChanged {
                id: ada(),
                roles: vec![Role::User, Role::Admin],
                previous_roles: vec![Role::User],
            })])
        );
    }

    #[test]
    fn deactivating_twice_appends_once() {
        let state = given(&[registered(ada())]);
        let me = actor(ada(), false, Standing::Active);
        let first = decide(state.as_ref(), &me, ada(), &UserCommand::Deactivate);
        assert_eq!(
            first,
            Ok(vec![UserEvent::Deactivated(UserDeactivated { id: ada() })])
        );
        let state = given(&[registered(ada()), first.unwrap().remove(0)]);
        let admin = actor(bob(), true, Standing::Active);
        let second = decide(state.as_ref(), &admin, ada(), &UserCommand::Deactivate);
        assert_eq!(second, Ok(vec![]));
    }

    #[test]
    fn a_deactivated_actor_is_refused_everything() {
        let state = given(&[
            registered(ada()),
            UserEvent::Deactivated(UserDeactivated { id: ada() }),
        ]);
        let me = actor(ada(), false, Standing::Deactivated);
        for command in [register(), UserCommand::Deactivate] {
            let result = decide(state.as_ref(), &me, ada(), &command);
            assert!(matches!(result, Err(DomainError::Forbidden(_))));
        }
    }

    #[test]
    fn a_deactivated_user_cannot_be_edited() {
        let state = given(&[
            registered(ada()),
            UserEvent::Deactivated(UserDeactivated { id: ada() }),
        ]);
        let admin = actor(bob(), true, Standing::Active);
        let result = decide(
            state.as_ref(),
            &admin,
            ada(),
            &UserCommand::ChangeRoles {
                roles: vec![Role::Admin],
            },
        );
        assert!(matches!(result, Err(DomainError::Conflict(_))));
    }

    #[test]
    fn registration_records_the_tokens_roles_and_always_user() {
        let events = decide(
            None,
            &actor(ada(), true, Standing::Unregistered),
            ada(),
            &UserCommand::Register {
                email: Email::parse("ada@example.com").unwrap(),
                name: Name::parse("Ada").unwrap(),
                roles: vec![Role::Admin],
            },
        );
        let Ok(events) = events else {
            panic!("registration refused: {events:?}")
        };
        assert!(
            matches!(&events[..], [UserEvent::Registered(e)] if e.roles == vec![Role::User, Role::Admin])
        );
    }

    #[test]
    fn an_admin_revokes_the_tokens_of_a_user_not_registered_yet() {
        let revoke = UserCommand::RevokeTokens {
            issued_up_to: 1_700_000_000,
        };
        let admin = decide(None, &actor(bob(), true, Standing::Active), ada(), &revoke);
        assert_eq!(
            admin,
            Ok(vec![UserEvent::TokensRevoked(UserTokensRevoked {
                id: ada(),
                issued_up_to: 1_700_000_000
            })])
        );
        let user = decide(None, &actor(ada(), false, Standing::Active), ada(), &revoke);
        assert!(matches!(user, Err(DomainError::Forbidden(_))));
        // Registering afterwards still works: the revocation is no registration.
        let mut state = None;
        for event in admin.unwrap_or_default() {
            apply(&mut state, &event);
        }
        assert!(state.is_none());
    }
}
