package clientapi

import "github.com/gorilla/mux"

func (a *API) adminRoutes(r *mux.Router) {}
