package token

// Sealer seals the signing keys' private keys at rest: the master keyring (masterkey.Keyring),
// with the key's kid as the additional data, so a sealed key moved to another row does not
// open. Open also opens the keys sealed by earlier versions.
type Sealer interface {
	Seal(plain, aad []byte) ([]byte, error)
	Open(sealed, aad []byte) ([]byte, error)
}

// SealedKey is one stored signing key as a master key rotation sees it: its kid and sealed
// private key as stored, and (for a store's ResealSigningKeys) the re-sealed blob to write in
// its place.
type SealedKey struct {
	KID    string
	Sealed []byte
	New    []byte
}
