package clientapi

import "github.com/gorilla/mux"

func (a *API) presenceRoutes(r *mux.Router) {}
