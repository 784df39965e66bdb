package server

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/registry"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/verify"
)

// localStatus answers the verify middleware of our own resources from the store directly, so a
// revocation is seen by the next request.
type localStatus struct {
	agents registry.Store
	tokens token.Store
}

func (l localStatus) Check(ctx context.Context, c *verify.Caller) error {
	a, err := l.agents.GetAgent(ctx, c.AgentID)
	if errors.Is(err, registry.ErrNotFound) {
		return fmt.Errorf("agent %s: %w", c.AgentID, verify.ErrRevoked)
	}
	if err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	if a.Status != registry.StatusClaimed {
		return fmt.Errorf("agent %s is %s: %w", a.ID, a.Status, verify.ErrRevoked)
	}
	revoked, err := l.tokens.IsTokenRevoked(ctx, c.JTI)
	if err != nil {
		return fmt.Errorf("token status: %w", err)
	}
	if revoked {
		return fmt.Errorf("token %s: %w", c.JTI, verify.ErrRevoked)
	}
	return nil
}

// localKeys gives the verify middleware our own published keys, without an HTTP round trip.
type localKeys struct{ keys *token.Keys }

func (l localKeys) PublicKey(ctx context.Context, kid string) (crypto.PublicKey, error) {
	pub, err := l.keys.PublicKey(ctx, kid)
	if errors.Is(err, token.ErrUnknownKey) {
		return nil, verify.ErrUnknownKey
	}
	return pub, err
}
