package server

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/mandate-dev/mandate/internal/delegation"
	"github.com/mandate-dev/mandate/internal/token"
	"github.com/mandate-dev/mandate/verify"
)

// localStatus answers the verify middleware of our own resources from the store directly, so a
// revocation is seen by the next request.
type localStatus struct{ deleg *delegation.Service }

func (l localStatus) Check(ctx context.Context, c *verify.Caller) error {
	agents := []string{c.AgentID}
	for _, a := range c.Chain {
		agents = append(agents, a.AgentID)
	}
	err := l.deleg.CheckLive(ctx, c.JTI, c.JKT, agents, c.Task)
	if errors.Is(err, delegation.ErrNotLive) {
		return fmt.Errorf("%v: %w", err, verify.ErrRevoked)
	}
	return err
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
