package principal

import (
	"context"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/apperr"
	"github.com/mandate-dev/mandate/internal/audit"
	"github.com/mandate-dev/mandate/internal/ids"
)

// CreateServiceAccount adds a service account owned by the caller. Any user may: a service
// account has no authority of its own until an admin's federation rule maps tokens to it.
func (s *Service) CreateServiceAccount(ctx context.Context, requestID string, by User, name, description string) (ServiceAccount, error) {
	if by.IsServiceAccount() {
		return ServiceAccount{}, apperr.New(apperr.Forbidden, "forbidden", "a service account cannot create service accounts")
	}
	if !nameRE.MatchString(name) {
		return ServiceAccount{}, apperr.New(apperr.Invalid, "name", "service account name %q: use 1 to 63 lower-case letters, digits, dots, dashes and underscores", apperr.Clip(name, 70))
	}
	a := ServiceAccount{ID: ids.New(ServiceAccountPrefix), Name: name, OwnerID: by.ID, Description: apperr.Clip(description, 500), CreatedAt: s.now().UTC()}
	ev := audit.New(s.now(), requestID, audit.ActionServiceAccountCreate)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, by.ID, a.ID
	err := s.store.CreateServiceAccount(ctx, a, ev)
	if errors.Is(err, ErrNameTaken) {
		return ServiceAccount{}, apperr.Wrap(err, apperr.Conflict, "name_taken", "a user or service account named %q exists", name)
	}
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("create service account %s: %w", name, err)
	}
	return a, nil
}

// ServiceAccount returns a service account by id or name, to its owner or an admin.
func (s *Service) ServiceAccount(ctx context.Context, by User, ref string) (ServiceAccount, error) {
	a, err := s.store.GetServiceAccount(ctx, ref)
	if errors.Is(err, ErrNotFound) || (err == nil && !by.Admin && a.OwnerID != by.ID && a.ID != by.ID) {
		return ServiceAccount{}, apperr.New(apperr.NotFound, "not_found", "no service account %q: see mandate service-accounts list", apperr.Clip(ref, 70))
	}
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("get service account %s: %w", ref, err)
	}
	return a, nil
}

// ListServiceAccounts lists the caller's service accounts (an admin's: all).
func (s *Service) ListServiceAccounts(ctx context.Context, by User) ([]ServiceAccount, error) {
	all, err := s.store.ListServiceAccounts(ctx)
	if err != nil {
		return nil, err
	}
	if by.Admin {
		return all, nil
	}
	var mine []ServiceAccount
	for _, a := range all {
		if a.OwnerID == by.ID {
			mine = append(mine, a)
		}
	}
	return mine, nil
}

// SetServiceAccountDisabled disables (or enables) a service account; its owner or an admin may.
// A disabled account gets no federated token, and the tokens it holds stop working at once.
func (s *Service) SetServiceAccountDisabled(ctx context.Context, requestID string, by User, ref string, disabled bool) (ServiceAccount, error) {
	if by.IsServiceAccount() {
		return ServiceAccount{}, apperr.New(apperr.Forbidden, "forbidden", "a service account cannot change service accounts")
	}
	a, err := s.ServiceAccount(ctx, by, ref)
	if err != nil {
		return ServiceAccount{}, err
	}
	action := audit.ActionServiceAccountDisable
	if !disabled {
		action = audit.ActionServiceAccountEnable
	}
	ev := audit.New(s.now(), requestID, action)
	ev.ActorType, ev.ActorID, ev.PrincipalID, ev.Target = audit.ActorUser, by.ID, a.ID, a.ID
	if err := s.store.SetServiceAccountDisabled(ctx, a.ID, disabled, ev); err != nil {
		return ServiceAccount{}, fmt.Errorf("set service account %s disabled: %w", a.ID, err)
	}
	a.Disabled = disabled
	return a, nil
}

// ActiveServiceAccount returns a service account that may act: it exists and is not disabled.
// For authenticating its tokens; refusals are Unauthenticated.
func (s *Service) ActiveServiceAccount(ctx context.Context, id string) (ServiceAccount, error) {
	a, err := s.store.GetServiceAccount(ctx, id)
	if errors.Is(err, ErrNotFound) || (err == nil && a.ID != id) {
		return ServiceAccount{}, apperr.New(apperr.Unauthenticated, "service_account_unknown", "the service account of this token no longer exists")
	}
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("get service account %s: %w", id, err)
	}
	if a.Disabled {
		return ServiceAccount{}, apperr.New(apperr.Unauthenticated, "service_account_disabled", "service account %s is disabled: its owner or an admin can enable it", a.Name)
	}
	return a, nil
}
