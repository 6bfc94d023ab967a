package clientapi

import "github.com/gorilla/mux"

func (a *API) registerRoutes(r *mux.Router) {}
