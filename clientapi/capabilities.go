package clientapi

import "github.com/gorilla/mux"

func (a *API) capabilityRoutes(r *mux.Router) {}
